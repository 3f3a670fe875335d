//! Start-up key checks and online re-encryption under a new salt key.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::entity::{deployment, named_credential};
use crate::{Result, Store};

/// Stored secrets sealed under a key id the configured ring does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableSecrets {
    /// The unknown key id.
    pub key_id: String,
    /// How many records it sealed.
    pub records: usize,
}

impl Store {
    /// Count records whose secrets the configured key ring cannot open, per key id.
    /// Run at start-up so a wrong salt key fails loudly instead of sending
    /// ciphertext (or nothing) upstream.
    pub async fn unreadable_secrets(&self) -> Result<Vec<UnreadableSecrets>> {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        let dep_ids: Vec<Option<String>> = deployment::Entity::find()
            .select_only()
            .column(deployment::Column::SecretKeyId)
            .filter(deployment::Column::SecretKeyId.is_not_null())
            .into_tuple()
            .all(&self.db)
            .await?;
        let cred_ids: Vec<Option<String>> = named_credential::Entity::find()
            .select_only()
            .column(named_credential::Column::SecretKeyId)
            .filter(named_credential::Column::SecretKeyId.is_not_null())
            .into_tuple()
            .all(&self.db)
            .await?;
        for key_id in dep_ids.into_iter().chain(cred_ids).flatten() {
            if !self.keys.load().knows(&key_id) {
                *counts.entry(key_id).or_default() += 1;
            }
        }
        Ok(counts.into_iter().map(|(key_id, records)| UnreadableSecrets { key_id, records }).collect())
    }
}
