//! Named credential rows ⇄ domain credentials, with secrets sealed at rest.

use deltallm_domain::credential::NamedCredential;
use deltallm_domain::params::split_secrets;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::Value;

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
                let pairs = found
                    .into_iter()
                    .map(|(pointer, v)| Value::Array(vec![Value::String(pointer), v]))
                    .collect();
                secret.insert(METADATA_SECRETS.into(), Value::Array(pairs));
            }
        }
        let sealed = (!secret.is_empty()).then(|| self.keys.seal_map(&secret, &aad(&c.credential_id)));
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
        if let (Some(key_id), Some(ct)) = (&r.secret_key_id, &r.secret_ciphertext) {
            config.extend(self.keys.open_map(key_id, ct, &aad(&r.credential_id))?);
        }
        let metadata = match r.metadata.as_deref() {
            Some(text) => {
                Some(serde_json::from_str(text).map_err(|e| Error::Corrupt(r.credential_id.clone(), e.to_string()))?)
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

    /// Delete; false when it did not exist. Linked credentials are refused by the caller (CRED-9).
    pub async fn delete_credential(&self, id: &str) -> Result<bool> {
        let res = row::Entity::delete_by_id(id.to_owned()).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }
}
