//! Key resolution. With the embedded default (SQLite in the data directory)
//! missing keys are generated once, stored with mode 0600 and reused; with
//! PostgreSQL explicit keys are required, since replicas must share them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use deltallm_domain::SecretString;

use crate::Error;
use crate::config::LoadedConfig;

/// Resolved keys and database URL.
#[derive(Debug)]
pub struct ResolvedKeys {
    /// Master key (admin and `/v1`).
    pub master_key: Option<SecretString>,
    /// Salt key (encryption at rest).
    pub salt_key: SecretString,
    /// Older salt keys accepted for reading during rotation.
    pub previous_salt_keys: Vec<SecretString>,
    /// Database URL.
    pub database_url: String,
    /// The data-directory file the salt key was read from (embedded default
    /// without an explicit key); `rotate-key` rewrites it.
    pub salt_key_file: Option<PathBuf>,
}

/// What a running gateway on the embedded default watches so that
/// `rotate-key` (which rewrites the salt key file) needs no restart.
#[derive(Debug, Clone)]
pub struct SaltKeyWatch {
    /// `<data_dir>/salt_key`.
    pub file: PathBuf,
    /// The salt key the process started with.
    pub current: SecretString,
    /// Other keys the ring already reads.
    pub previous: Vec<SecretString>,
}

/// Backup of the salt key a rotation replaced, next to `salt_key`. It is read
/// as a previous key, so a rotation interrupted after the file swap still starts.
pub const PREVIOUS_SALT_KEY_FILE: &str = "salt_key.previous";

/// CFG-2 master key rule: ≥ 32 characters with letters and digits.
pub fn check_master_key(key: &str) -> Result<(), Error> {
    let ok = key.chars().count() >= 32
        && key.chars().any(|c| c.is_ascii_alphabetic())
        && key.chars().any(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Config("master_key must be at least 32 characters and contain both letters and digits".into()))
    }
}

/// CFG-2 salt key rule.
pub fn check_salt_key(key: &str) -> Result<(), Error> {
    if key.trim().eq_ignore_ascii_case("change-me") {
        return Err(Error::Config("salt_key 'change-me' is a placeholder; set a real secret".into()));
    }
    if key.trim().len() < 16 {
        return Err(Error::Config("salt_key must be at least 16 characters".into()));
    }
    Ok(())
}

fn generate_master_key() -> String {
    // "sk-" guarantees letters; 48 hex chars virtually always include a digit,
    // and the loop makes it certain.
    loop {
        let k = format!("sk-deltallm-{}", deltallm_secrets::random_hex(24));
        if k.chars().any(|c| c.is_ascii_digit()) {
            return k;
        }
    }
}

/// Write a key file with mode 0600, replacing it atomically (temp file + rename).
pub(crate) fn write_key_file(path: &Path, value: &str) -> Result<(), Error> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| Error::Io(format!("cannot create {}: {e}", tmp.display())))?;
    f.write_all(value.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| Error::Io(format!("cannot replace {}: {e}", path.display())))
}

/// Read a key file, or create it with a fresh value (mode 0600).
fn read_or_create(path: &Path, generate: impl FnOnce() -> String) -> Result<(String, bool), Error> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    }
    let value = generate();
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::Io(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(value.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok((value, true))
}

fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("deltallm.db").display())
}

/// Resolve keys and the database URL (CFG-2 precedence: env > config > `DATABASE_URL`).
pub fn resolve(loaded: &LoadedConfig) -> Result<ResolvedKeys, Error> {
    let g = &loaded.config.general_settings;
    let database_url =
        g.database_url.clone().or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.trim().is_empty()));
    let mut previous_salt_keys: Vec<SecretString> =
        g.previous_salt_keys.iter().cloned().map(SecretString::new).collect();
    // Comma-separated, for replicas rolled during a rotation without a config change.
    if let Ok(list) = std::env::var("DELTALLM_PREVIOUS_SALT_KEYS") {
        previous_salt_keys.extend(list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(SecretString::new));
    }
    let explicit_master = g.master_key.clone();
    let explicit_salt = g.salt_key.clone();
    if let Some(k) = &explicit_master {
        check_master_key(k)?;
    }
    if let Some(k) = &explicit_salt {
        check_salt_key(k)?;
    }
    match database_url {
        Some(url) if !url.starts_with("sqlite") => {
            let mut missing = Vec::new();
            if explicit_master.is_none() {
                missing.push("DELTALLM_MASTER_KEY (general_settings.master_key)");
            }
            if explicit_salt.is_none() {
                missing.push("DELTALLM_SALT_KEY (general_settings.salt_key)");
            }
            if !missing.is_empty() {
                return Err(Error::Config(format!(
                    "a shared database is configured, so keys must be explicit and identical on every replica; missing: {}",
                    missing.join(", ")
                )));
            }
            Ok(ResolvedKeys {
                master_key: explicit_master.map(SecretString::new),
                salt_key: SecretString::new(explicit_salt.unwrap_or_default()),
                previous_salt_keys,
                database_url: url,
                salt_key_file: None,
            })
        }
        url => {
            let data_dir = loaded.config.server.data_dir.clone();
            let salt_key_file = explicit_salt.is_none().then(|| data_dir.join("salt_key"));
            let (master, salt) = embedded_keys(&data_dir, explicit_master, explicit_salt)?;
            if salt_key_file.is_some()
                && let Ok(old) = fs::read_to_string(data_dir.join(PREVIOUS_SALT_KEY_FILE))
                && !old.trim().is_empty()
            {
                previous_salt_keys.push(SecretString::new(old.trim()));
            }
            Ok(ResolvedKeys {
                master_key: Some(SecretString::new(master)),
                salt_key: SecretString::new(salt),
                previous_salt_keys,
                salt_key_file,
                database_url: match url {
                    Some(u) => u,
                    None => {
                        fs::create_dir_all(&data_dir).map_err(|e| {
                            Error::Io(format!("cannot create data directory {}: {e}", data_dir.display()))
                        })?;
                        sqlite_url(&data_dir)
                    }
                },
            })
        }
    }
}

/// Keys for the embedded default: explicit ones win; otherwise generated once
/// into `<data_dir>/master_key` and `<data_dir>/salt_key`.
fn embedded_keys(data_dir: &PathBuf, master: Option<String>, salt: Option<String>) -> Result<(String, String), Error> {
    if master.is_some() && salt.is_some() {
        return Ok((master.unwrap_or_default(), salt.unwrap_or_default()));
    }
    fs::create_dir_all(data_dir)
        .map_err(|e| Error::Io(format!("cannot create data directory {}: {e}", data_dir.display())))?;
    let master = match master {
        Some(m) => m,
        None => {
            let path = data_dir.join("master_key");
            let (key, created) = read_or_create(&path, generate_master_key)?;
            if created {
                tracing::warn!(path = %path.display(), "generated a master key (mode 0600); use it as the Bearer token for /v1 and /ui/api");
            } else {
                tracing::info!(path = %path.display(), "using the stored master key");
            }
            key
        }
    };
    let salt = match salt {
        Some(s) => s,
        None => {
            let path = data_dir.join("salt_key");
            let (key, created) = read_or_create(&path, || deltallm_secrets::random_hex(32))?;
            if created {
                tracing::warn!(path = %path.display(), "generated a salt key (mode 0600); back it up: stored provider keys cannot be decrypted without it");
            }
            key
        }
    };
    Ok((master, salt))
}
