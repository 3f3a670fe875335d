//! Process bootstrap for the gateway (and later worker) binaries: layered
//! settings (YAML file, then `DELTALLM_*` environment), secret references,
//! the embedded data directory with generated keys, logging, and database
//! connect + migrate. Everything worth testing in a binary lives here.

pub mod config;
pub mod keys;
pub mod rotate;
pub mod serve;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;

use deltallm_core::GatewaySettings;
use deltallm_domain::SecretString;
use deltallm_migration::{Migrator, MigratorTrait};
use deltallm_secrets::{Key, KeyRing};
use deltallm_storage::Store;

pub use config::{Config, LoadedConfig};

/// Everything the gateway binary needs to serve.
pub struct Prepared {
    /// Core settings.
    pub settings: GatewaySettings,
    /// Connected, migrated store.
    pub store: Store,
    /// Listen address.
    pub listen: SocketAddr,
    /// Longest wait for a client's request head (`server.header_read_timeout_seconds`).
    pub header_read_timeout: Option<std::time::Duration>,
    /// Human-readable database description (no credentials).
    pub database: String,
    /// The generated salt key's file and the ring's other keys, on the
    /// embedded default: a rotation there is picked up without a restart.
    pub salt_key_watch: Option<keys::SaltKeyWatch>,
}

/// Errors before the gateway can serve. Messages name what is wrong and never
/// include a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings are invalid.
    #[error("{0}")]
    Config(String),
    /// The data directory or key files could not be used.
    #[error("{0}")]
    Io(String),
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(String),
}

/// Strip the password from a database URL for logs.
pub fn describe_database(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Connect to the database and run migrations.
pub async fn connect_store(url: &str, ring: KeyRing) -> Result<Store, Error> {
    let store = Store::connect(url, ring)
        .await
        .map_err(|e| Error::Database(format!("cannot connect to {}: {e}", describe_database(url))))?;
    Migrator::up(store.connection(), None)
        .await
        .map_err(|e| Error::Database(format!("migrations failed on {}: {e}", describe_database(url))))?;
    Ok(store)
}

/// A ring sealing with `current` and opening `previous` keys too.
pub fn key_ring(current: &SecretString, previous: &[SecretString]) -> Result<KeyRing, Error> {
    let derive = |k: &SecretString| Key::derive(k.expose()).map_err(|e| Error::Config(e.to_string()));
    let current = derive(current)?;
    let previous = previous.iter().map(derive).collect::<Result<Vec<_>, _>>()?;
    Ok(KeyRing::with_previous(current, previous))
}

/// Load settings, resolve keys (generating them for the embedded default),
/// connect and migrate.
pub async fn prepare(config_path: Option<PathBuf>) -> Result<Prepared, Error> {
    let loaded = config::load(config_path)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let keys = keys::resolve(&loaded)?;
    let ring = key_ring(&keys.salt_key, &keys.previous_salt_keys)?;
    let store = connect_store(&keys.database_url, ring).await?;
    let listen = loaded.listen_addr()?;
    let settings = loaded.gateway_settings(keys.master_key.clone())?;
    let salt_key_watch = keys.salt_key_file.clone().map(|file| keys::SaltKeyWatch {
        file,
        current: keys.salt_key.clone(),
        previous: keys.previous_salt_keys.clone(),
    });
    Ok(Prepared {
        settings,
        store,
        listen,
        header_read_timeout: loaded.header_read_timeout(),
        database: describe_database(&keys.database_url),
        salt_key_watch,
    })
}
