//! Named credential rows ⇄ domain credentials, with secrets sealed at rest.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use deltallm_domain::credential::NamedCredential;
use deltallm_domain::deployment::Deployment;
use deltallm_domain::params::{extract_secrets_deep, restore_secrets_deep, split_secrets};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;

use crate::deployments::{from_pointer_pairs, pointer_pairs};
use crate::entity::{deployment, named_credential as row};
use crate::error::{is_fk_violation, is_unique_violation, parse_object};
use crate::{Error, Result, Store};

pub(crate) fn aad(id: &str) -> Vec<u8> {
    format!("named_credentials/{id}").into_bytes()
}

/// Key of the sealed document that carries secrets found inside `metadata`
/// (as JSON-pointer/value pairs). Never a connection field name (CRED-2).
const METADATA_SECRETS: &str = "$metadata";

/// A deployment linked to a credential, as listed on the credential (ADM-5).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkedDeployment {
    /// Id.
    pub deployment_id: String,
    /// Public name.
    pub model_name: String,
}

/// How many rows a re-encryption changed (`rotate-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reencrypted {
    /// Deployments whose secrets were resealed under the current key.
    pub deployments: usize,
    /// Named credentials resealed.
    pub credentials: usize,
    /// Rows skipped because a concurrent write replaced them meanwhile
    /// (that write sealed with the writer's current key).
    pub skipped: usize,
    /// Key ids the resealed rows were encrypted with before.
    pub from_key_ids: Vec<String>,
}

impl Store {
    fn credential_to_row(&self, c: &NamedCredential) -> row::ActiveModel {
        let (public, mut secret) = split_secrets(&c.connection_config);
        // Free-form metadata may hold secret-looking keys too (CRED-10).
        let mut metadata = c.metadata.clone();
        if let Some(doc) = metadata.as_mut() {
            let found = extract_secrets_deep(doc);
            if !found.is_empty() {
                secret.insert(METADATA_SECRETS.into(), pointer_pairs(found));
            }
        }
        let sealed = (!secret.is_empty()).then(|| self.keys.load().seal_map(&secret, &aad(&c.credential_id)));
        row::ActiveModel {
            credential_id: Set(c.credential_id.clone()),
            name: Set(c.name.clone()),
            provider: Set(c.provider.clone()),
            connection_config: Set(Value::Object(public).to_string()),
            secret_key_id: Set(sealed.as_ref().map(|s| s.key_id.clone())),
            secret_ciphertext: Set(sealed.map(|s| s.ciphertext)),
            metadata: Set(metadata.as_ref().map(Value::to_string)),
            created_by_account_id: Set(c.created_by_account_id.clone()),
            created_at: Set(c.created_at),
            updated_at: Set(c.updated_at),
        }
    }

    pub(crate) fn row_to_credential(&self, r: row::Model) -> Result<NamedCredential> {
        let mut config = parse_object(&r.credential_id, &r.connection_config)?;
        let mut metadata_secrets = Vec::new();
        if let (Some(key_id), Some(ct)) = (&r.secret_key_id, &r.secret_ciphertext) {
            let mut secret = self.keys.load().open_map(key_id, ct, &aad(&r.credential_id))?;
            if let Some(pairs) = secret.remove(METADATA_SECRETS) {
                metadata_secrets = from_pointer_pairs(pairs);
            }
            config.extend(secret);
        }
        let metadata = match r.metadata.as_deref() {
            Some(text) => {
                let mut doc: Value =
                    serde_json::from_str(text).map_err(|e| Error::Corrupt(r.credential_id.clone(), e.to_string()))?;
                restore_secrets_deep(&mut doc, metadata_secrets);
                Some(doc)
            }
            None => None,
        };
        Ok(NamedCredential {
            credential_id: r.credential_id,
            name: r.name,
            provider: r.provider,
            connection_config: config,
            metadata,
            created_by_account_id: r.created_by_account_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    /// Every credential, ordered by name.
    pub async fn all_credentials(&self) -> Result<Vec<NamedCredential>> {
        let rows = row::Entity::find().order_by_asc(row::Column::Name).all(&self.db).await?;
        rows.into_iter().map(|r| self.row_to_credential(r)).collect()
    }

    /// One credential by id.
    pub async fn get_credential(&self, id: &str) -> Result<Option<NamedCredential>> {
        match row::Entity::find_by_id(id.to_owned()).one(&self.db).await? {
            Some(r) => Ok(Some(self.row_to_credential(r)?)),
            None => Ok(None),
        }
    }

    /// Insert; a taken id or name is a conflict.
    pub async fn insert_credential(&self, c: &NamedCredential) -> Result<()> {
        match row::Entity::insert(self.credential_to_row(c)).exec(&self.db).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("A named credential named '{}' already exists", c.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replace a stored credential.
    pub async fn update_credential(&self, c: &NamedCredential) -> Result<()> {
        match row::Entity::update(self.credential_to_row(c)).exec(&self.db).await {
            Ok(_) => Ok(()),
            Err(sea_orm::DbErr::RecordNotUpdated) => Err(Error::NotFound("Named credential not found".into())),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("A named credential named '{}' already exists", c.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Number of deployments linked to a credential (CRED-8 `usage_count`).
    pub async fn credential_usage(&self, id: &str) -> Result<u64> {
        Ok(deployment::Entity::find().filter(deployment::Column::NamedCredentialId.eq(id)).count(&self.db).await?)
    }

    /// `usage_count` of every linked credential id (one grouped query).
    pub async fn credential_usage_counts(&self) -> Result<HashMap<String, u64>> {
        let rows: Vec<(Option<String>, i64)> = deployment::Entity::find()
            .select_only()
            .column(deployment::Column::NamedCredentialId)
            .column_as(deployment::Column::DeploymentId.count(), "n")
            .filter(deployment::Column::NamedCredentialId.is_not_null())
            .group_by(deployment::Column::NamedCredentialId)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().filter_map(|(id, n)| Some((id?, u64::try_from(n).unwrap_or(0)))).collect())
    }

    /// Up to `limit` deployments linked to a credential, by name then id (no secrets are read).
    pub async fn linked_deployments(&self, credential_id: &str, limit: u64) -> Result<Vec<LinkedDeployment>> {
        let rows: Vec<(String, String)> = deployment::Entity::find()
            .select_only()
            .column(deployment::Column::DeploymentId)
            .column(deployment::Column::ModelName)
            .filter(deployment::Column::NamedCredentialId.eq(credential_id))
            .order_by_asc(deployment::Column::ModelName)
            .order_by_asc(deployment::Column::DeploymentId)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(deployment_id, model_name)| LinkedDeployment { deployment_id, model_name }).collect())
    }

    /// Delete an unlinked credential (CRED-9): linked → `Conflict`, unknown →
    /// `NotFound`. The usage check and the delete share one transaction, and
    /// the foreign key refuses a link that slips in from another replica.
    pub async fn delete_credential(&self, id: &str) -> Result<()> {
        let linked = || Error::Conflict("Named credential is still linked to model deployments".into());
        let txn = self.begin_write().await?;
        let in_use =
            deployment::Entity::find().filter(deployment::Column::NamedCredentialId.eq(id)).count(&txn).await?;
        if in_use > 0 {
            return Err(linked());
        }
        let res = match row::Entity::delete_by_id(id.to_owned()).exec(&txn).await {
            Ok(res) => res,
            Err(e) if is_fk_violation(&e) => return Err(linked()),
            Err(e) => return Err(e.into()),
        };
        if res.rows_affected == 0 {
            return Err(Error::NotFound("Named credential not found".into()));
        }
        match txn.commit().await {
            Ok(()) => Ok(()),
            Err(e) if is_fk_violation(&e) => Err(linked()),
            Err(e) => Err(e.into()),
        }
    }

    /// CRED-11 conversion in ONE transaction: insert `credential`, then store
    /// each relinked deployment (already stripped and linked by the caller).
    /// Each update only matches a row that is still unlinked and unchanged
    /// since the `updated_at` the caller read; any miss rolls everything back.
    pub async fn convert_inline_group(
        &self,
        credential: &NamedCredential,
        relinked: &[(Deployment, DateTime<Utc>)],
    ) -> Result<()> {
        let txn = self.begin_write().await?;
        match row::Entity::insert(self.credential_to_row(credential)).exec(&txn).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!("A named credential named '{}' already exists", credential.name)));
            }
            Err(e) => return Err(e.into()),
        }
        for (d, read_updated_at) in relinked {
            let res = deployment::Entity::update_many()
                .set(self.deployment_to_row(d))
                .filter(deployment::Column::DeploymentId.eq(d.deployment_id.as_str()))
                .filter(deployment::Column::NamedCredentialId.is_null())
                .filter(deployment::Column::UpdatedAt.eq(*read_updated_at))
                .exec(&txn)
                .await?;
            if res.rows_affected != 1 {
                // Dropping the transaction rolls back the credential and the earlier relinks.
                return Err(Error::Conflict(format!(
                    "Deployment '{}' changed during the conversion; nothing was changed",
                    d.deployment_id
                )));
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Re-seal every stored secret under the ring's current key (`rotate-key`).
    /// Row by row, each a conditional update on the ciphertext it read, so it
    /// runs while gateways keep writing and can be re-run after an
    /// interruption (rows already under the current key are left alone).
    pub async fn reencrypt_all(&self) -> Result<Reencrypted> {
        let current = self.keys.load().current_id().to_owned();
        let mut out = Reencrypted::default();
        let mut from = BTreeSet::new();

        let deps: Vec<(String, Option<String>, Option<String>)> = deployment::Entity::find()
            .select_only()
            .column(deployment::Column::DeploymentId)
            .column(deployment::Column::SecretKeyId)
            .column(deployment::Column::SecretCiphertext)
            .filter(deployment::Column::SecretKeyId.is_not_null())
            .filter(deployment::Column::SecretKeyId.ne(current.as_str()))
            .into_tuple()
            .all(&self.db)
            .await?;
        for (id, key_id, ct) in deps {
            let (Some(key_id), Some(ct)) = (key_id, ct) else { continue };
            let aad = crate::deployments::aad(&id);
            let keys = self.keys.load();
            let sealed = keys.seal(&keys.open(&key_id, &ct, &aad)?, &aad);
            let res = deployment::Entity::update_many()
                .col_expr(deployment::Column::SecretCiphertext, Expr::value(sealed.ciphertext))
                .col_expr(deployment::Column::SecretKeyId, Expr::value(sealed.key_id))
                .filter(deployment::Column::DeploymentId.eq(id.as_str()))
                .filter(deployment::Column::SecretKeyId.eq(key_id.as_str()))
                .filter(deployment::Column::SecretCiphertext.eq(ct.as_str()))
                .exec(&self.db)
                .await?;
            if res.rows_affected == 1 {
                out.deployments += 1;
                from.insert(key_id);
            } else {
                out.skipped += 1;
            }
        }

        let creds: Vec<(String, Option<String>, Option<String>)> = row::Entity::find()
            .select_only()
            .column(row::Column::CredentialId)
            .column(row::Column::SecretKeyId)
            .column(row::Column::SecretCiphertext)
            .filter(row::Column::SecretKeyId.is_not_null())
            .filter(row::Column::SecretKeyId.ne(current.as_str()))
            .into_tuple()
            .all(&self.db)
            .await?;
        for (id, key_id, ct) in creds {
            let (Some(key_id), Some(ct)) = (key_id, ct) else { continue };
            let aad = aad(&id);
            let keys = self.keys.load();
            let sealed = keys.seal(&keys.open(&key_id, &ct, &aad)?, &aad);
            let res = row::Entity::update_many()
                .col_expr(row::Column::SecretCiphertext, Expr::value(sealed.ciphertext))
                .col_expr(row::Column::SecretKeyId, Expr::value(sealed.key_id))
                .filter(row::Column::CredentialId.eq(id.as_str()))
                .filter(row::Column::SecretKeyId.eq(key_id.as_str()))
                .filter(row::Column::SecretCiphertext.eq(ct.as_str()))
                .exec(&self.db)
                .await?;
            if res.rows_affected == 1 {
                out.credentials += 1;
                from.insert(key_id);
            } else {
                out.skipped += 1;
            }
        }
        out.from_key_ids = from.into_iter().collect();
        Ok(out)
    }
}
