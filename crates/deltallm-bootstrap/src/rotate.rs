//! `deltallm-gateway rotate-key`: re-encrypt every stored secret under a new
//! salt key (CRED-10). The new key is read from an environment variable or a
//! file, never from the command line, so it stays out of shell history and
//! process listings.

use std::fmt;
use std::path::{Path, PathBuf};

use deltallm_domain::SecretString;

use crate::keys::{self, PREVIOUS_SALT_KEY_FILE};
use crate::{Error, config, connect_store, describe_database, key_ring};

/// Where the new salt key comes from.
#[derive(Debug, Clone)]
pub enum NewKeySource {
    /// An environment variable's name.
    Env(String),
    /// A file holding the key (trailing whitespace ignored).
    File(PathBuf),
}

/// Read the new salt key and check it (CFG-2 rules).
pub fn read_new_key(source: &NewKeySource) -> Result<SecretString, Error> {
    let raw = match source {
        NewKeySource::Env(name) => std::env::var(name).map_err(|_| {
            Error::Config(format!("environment variable {name} is not set (it must hold the new salt key)"))
        })?,
        NewKeySource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Io(format!("cannot read the new salt key from {}: {e}", path.display())))?,
    };
    let key = raw.trim().to_owned();
    keys::check_salt_key(&key)?;
    Ok(SecretString::new(key))
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Deployments resealed.
    pub deployments: usize,
    /// Named credentials resealed.
    pub credentials: usize,
    /// Rows a concurrent write had already replaced (sealed by that writer).
    pub skipped: usize,
    /// Key ids the resealed rows used before (the configured key id if none changed).
    pub from_key_ids: Vec<String>,
    /// The new key id.
    pub to_key_id: String,
    /// The data-directory key file that now holds the new key, if any.
    pub rewrote_key_file: Option<PathBuf>,
    /// Database description (no credentials).
    pub database: String,
}

impl fmt::Display for RotationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "re-encrypted {} deployment(s) and {} named credential(s) from key id {} to key id {}",
            self.deployments,
            self.credentials,
            self.from_key_ids.join(", "),
            self.to_key_id
        )
    }
}

/// Re-encrypt everything stored under the configured database with `new_key`.
///
/// The ring seals with the new key and opens the configured salt key, every
/// `previous_salt_keys` entry and a `salt_key.previous` backup. Rows are
/// resealed one by one with conditional updates, so gateways may keep serving
/// and writing meanwhile, and an interrupted run can simply be repeated.
///
/// With the embedded default (salt key generated into the data directory) the
/// key file is swapped first — old key kept as `salt_key.previous`, which is
/// read as a previous key — so the next start opens both old and new rows.
pub async fn rotate_key(config_path: Option<PathBuf>, new_key: SecretString) -> Result<RotationReport, Error> {
    let loaded = config::load(config_path)?;
    let resolved = keys::resolve(&loaded)?;
    let old_key = resolved.salt_key.clone();
    let mut previous = vec![old_key.clone()];
    previous.extend(resolved.previous_salt_keys.iter().cloned());
    let ring = key_ring(&new_key, &previous)?;
    let old_id = key_ring(&old_key, &[])?.current_id().to_owned();
    let to_key_id = ring.current_id().to_owned();
    let database = describe_database(&resolved.database_url);
    let store = connect_store(&resolved.database_url, ring).await?;

    // Refuse before touching anything if some rows are sealed under a key we do not hold.
    let unreadable = store.unreadable_secrets().await.map_err(|e| Error::Database(e.to_string()))?;
    if !unreadable.is_empty() {
        let detail: Vec<String> =
            unreadable.iter().map(|u| format!("key id '{}' ({} record(s))", u.key_id, u.records)).collect();
        return Err(Error::Config(format!(
            "cannot rotate: stored secrets were encrypted with keys that are not configured: {}; add the missing salt key to previous_salt_keys and retry",
            detail.join(", ")
        )));
    }

    let mut rewrote_key_file = None;
    if let Some(path) = &resolved.salt_key_file
        && old_key.expose() != new_key.expose()
    {
        swap_key_file(path, &old_key, &new_key)?;
        rewrote_key_file = Some(path.clone());
    }

    let done = store.reencrypt_all().await.map_err(|e| Error::Database(e.to_string()))?;
    let from_key_ids = if done.from_key_ids.is_empty() { vec![old_id] } else { done.from_key_ids };
    let report = RotationReport {
        deployments: done.deployments,
        credentials: done.credentials,
        skipped: done.skipped,
        from_key_ids,
        to_key_id,
        rewrote_key_file,
        database,
    };
    tracing::info!(
        target: "deltallm::audit",
        action = "rotate_key",
        resource = "secrets",
        deployments = report.deployments,
        credentials = report.credentials,
        skipped = report.skipped,
        from = %report.from_key_ids.join(","),
        to = %report.to_key_id,
        "audit"
    );
    Ok(report)
}

/// Keep the old key as `salt_key.previous`, then atomically replace `salt_key`.
fn swap_key_file(path: &Path, old: &SecretString, new: &SecretString) -> Result<(), Error> {
    let backup = path.with_file_name(PREVIOUS_SALT_KEY_FILE);
    keys::write_key_file(&backup, old.expose())?;
    keys::write_key_file(path, new.expose())
}
