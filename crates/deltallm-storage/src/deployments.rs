//! Deployment rows ⇄ domain deployments, with secrets sealed at rest.

use chrono::Utc;
use deltallm_domain::deployment::Deployment;
use deltallm_domain::params::{extract_secrets_deep, extract_secrets_deep_by, restore_secrets_deep, split_secrets};
use deltallm_domain::redaction;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;

use crate::entity::deployment as row;
use crate::error::{is_unique_violation, parse_object};
use crate::{Error, Result, Store};

/// Filters of the admin list (ADM-2).
#[derive(Debug, Clone, Default)]
pub struct DeploymentQuery {
    /// Case-insensitive substring of model_name, deployment_id or provider.
    pub search: Option<String>,
    /// Exact provider.
    pub provider: Option<String>,
    /// Exact mode.
    pub mode: Option<String>,
    /// Page size.
    pub limit: u64,
    /// Page offset.
    pub offset: u64,
}

/// Slots of the sealed map that hold nested secrets, as (pointer, value) pairs.
/// `$` cannot start a stored params key that is a secret, so they never clash.
const NESTED_PARAMS_SECRETS: &str = "$params";
const MODEL_INFO_SECRETS: &str = "$model_info";

pub(crate) fn pointer_pairs(pairs: Vec<(String, Value)>) -> Value {
    Value::Array(pairs.into_iter().map(|(pointer, v)| Value::Array(vec![Value::String(pointer), v])).collect())
}

pub(crate) fn from_pointer_pairs(pairs: Value) -> Vec<(String, Value)> {
    let Value::Array(pairs) = pairs else { return Vec::new() };
    pairs
        .into_iter()
        .filter_map(|pair| match pair {
            Value::Array(mut kv) if kv.len() == 2 => {
                let v = kv.pop()?;
                Some((kv.pop()?.as_str()?.to_owned(), v))
            }
            _ => None,
        })
        .collect()
}

pub(crate) fn aad(id: &str) -> Vec<u8> {
    format!("deployments/{id}").into_bytes()
}

impl Store {
    pub(crate) fn deployment_to_row(&self, d: &Deployment) -> row::ActiveModel {
        let (public, mut secret) = split_secrets(&d.deltallm_params);
        // Secret-named keys nested in params or anywhere in model_info are
        // sealed too (CRED-10), kept as (JSON pointer, value) pairs.
        let mut public = Value::Object(public);
        let nested = extract_secrets_deep(&mut public);
        let mut model_info = Value::Object(d.model_info.clone());
        let info_secrets = extract_secrets_deep_by(&mut model_info, redaction::is_model_info_secret);
        for (slot, pairs) in [(NESTED_PARAMS_SECRETS, nested), (MODEL_INFO_SECRETS, info_secrets)] {
            if !pairs.is_empty() {
                secret.insert(slot.into(), pointer_pairs(pairs));
            }
        }
        let sealed = (!secret.is_empty()).then(|| self.keys.load().seal_map(&secret, &aad(&d.deployment_id)));
        row::ActiveModel {
            deployment_id: Set(d.deployment_id.clone()),
            model_name: Set(d.model_name.clone()),
            provider: Set(d.provider()),
            mode: Set(d.mode().as_str().to_owned()),
            named_credential_id: Set(d.named_credential_id.clone()),
            deltallm_params: Set(public.to_string()),
            model_info: Set(model_info.to_string()),
            secret_key_id: Set(sealed.as_ref().map(|s| s.key_id.clone())),
            secret_ciphertext: Set(sealed.map(|s| s.ciphertext)),
            created_at: Set(d.created_at),
            updated_at: Set(d.updated_at),
        }
    }

    pub(crate) fn row_to_deployment(&self, r: row::Model) -> Result<Deployment> {
        let mut params = Value::Object(parse_object(&r.deployment_id, &r.deltallm_params)?);
        let mut model_info = Value::Object(parse_object(&r.deployment_id, &r.model_info)?);
        if let (Some(key_id), Some(ct)) = (&r.secret_key_id, &r.secret_ciphertext) {
            let mut secret = self.keys.load().open_map(key_id, ct, &aad(&r.deployment_id))?;
            let nested = secret.remove(NESTED_PARAMS_SECRETS).map(from_pointer_pairs).unwrap_or_default();
            let info = secret.remove(MODEL_INFO_SECRETS).map(from_pointer_pairs).unwrap_or_default();
            restore_secrets_deep(&mut params, nested);
            restore_secrets_deep(&mut model_info, info);
            if let Value::Object(p) = &mut params {
                p.extend(secret);
            }
        }
        let as_map = |v: Value| match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let (params, model_info) = (as_map(params), as_map(model_info));
        Ok(Deployment {
            model_info,
            deployment_id: r.deployment_id,
            model_name: r.model_name,
            named_credential_id: r.named_credential_id,
            deltallm_params: params,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    /// Every deployment, for a registry build.
    pub async fn all_deployments(&self) -> Result<Vec<Deployment>> {
        let rows = row::Entity::find()
            .order_by_asc(row::Column::ModelName)
            .order_by_asc(row::Column::CreatedAt)
            .all(&self.db)
            .await?;
        rows.into_iter().map(|r| self.row_to_deployment(r)).collect()
    }

    /// How many deployments are stored.
    pub async fn count_deployments(&self) -> Result<u64> {
        Ok(row::Entity::find().count(&self.db).await?)
    }

    /// One page of the admin list and the total matching.
    pub async fn query_deployments(&self, q: &DeploymentQuery) -> Result<(Vec<Deployment>, u64)> {
        let mut select = row::Entity::find();
        if let Some(search) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            let pattern = || LikeExpr::new(format!("%{escaped}%")).escape('\\');
            let lower = |c: row::Column| Expr::expr(Func::lower(Expr::col(c)));
            select = select.filter(
                lower(row::Column::ModelName)
                    .like(pattern())
                    .or(lower(row::Column::DeploymentId).like(pattern()))
                    .or(lower(row::Column::Provider).like(pattern())),
            );
        }
        if let Some(p) = q.provider.as_deref().filter(|s| !s.is_empty()) {
            select = select.filter(row::Column::Provider.eq(p.trim().to_ascii_lowercase()));
        }
        if let Some(m) = q.mode.as_deref().filter(|s| !s.is_empty()) {
            select = select.filter(row::Column::Mode.eq(m.trim()));
        }
        let total = select.clone().count(&self.db).await?;
        let rows = select
            .order_by_asc(row::Column::ModelName)
            .order_by_asc(row::Column::CreatedAt)
            .order_by_asc(row::Column::DeploymentId)
            .limit(q.limit)
            .offset(q.offset)
            .all(&self.db)
            .await?;
        let page = rows.into_iter().map(|r| self.row_to_deployment(r)).collect::<Result<_>>()?;
        Ok((page, total))
    }

    /// One deployment by id.
    pub async fn get_deployment(&self, id: &str) -> Result<Option<Deployment>> {
        match row::Entity::find_by_id(id.to_owned()).one(&self.db).await? {
            Some(r) => Ok(Some(self.row_to_deployment(r)?)),
            None => Ok(None),
        }
    }

    /// Deployments sharing a public name.
    pub async fn deployments_named(&self, model_name: &str) -> Result<Vec<Deployment>> {
        let rows = row::Entity::find()
            .filter(row::Column::ModelName.eq(model_name))
            .order_by_asc(row::Column::CreatedAt)
            .all(&self.db)
            .await?;
        rows.into_iter().map(|r| self.row_to_deployment(r)).collect()
    }

    /// Deployments linked to a named credential.
    pub async fn deployments_linked_to(&self, credential_id: &str) -> Result<Vec<Deployment>> {
        let rows = row::Entity::find()
            .filter(row::Column::NamedCredentialId.eq(credential_id))
            .order_by_asc(row::Column::ModelName)
            .all(&self.db)
            .await?;
        rows.into_iter().map(|r| self.row_to_deployment(r)).collect()
    }

    /// Insert a new deployment; a taken id is a conflict (DEP-2).
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<()> {
        match row::Entity::insert(self.deployment_to_row(d)).exec(&self.db).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("Deployment '{}' already exists", d.deployment_id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Insert deployments whose ids are free, skipping existing ones (config bootstrap, CFG-4).
    pub async fn insert_missing_deployments(&self, list: &[Deployment]) -> Result<usize> {
        let mut inserted = 0;
        for d in list {
            if row::Entity::find_by_id(d.deployment_id.clone()).one(&self.db).await?.is_none() {
                self.insert_deployment(d).await?;
                inserted += 1;
            }
        }
        Ok(inserted)
    }

    /// Replace a stored deployment (same id).
    pub async fn update_deployment(&self, d: &Deployment) -> Result<()> {
        let mut am = self.deployment_to_row(d);
        am.updated_at = Set(Utc::now());
        let res = row::Entity::update(am).exec(&self.db).await;
        match res {
            Ok(_) => Ok(()),
            Err(sea_orm::DbErr::RecordNotUpdated) => Err(Error::NotFound("Deployment not found".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete; false when it did not exist.
    pub async fn delete_deployment(&self, id: &str) -> Result<bool> {
        let res = row::Entity::delete_by_id(id.to_owned()).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }
}
