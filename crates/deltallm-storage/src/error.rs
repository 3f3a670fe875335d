//! Storage errors.

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A unique key is taken.
    #[error("{0}")]
    Conflict(String),
    /// The record does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored secret cannot be opened with the configured keys.
    #[error("{0}")]
    Secret(#[from] deltallm_secrets::Error),
    /// A stored document is not valid JSON (manual edits, corruption).
    #[error("stored record '{0}' is corrupted: {1}")]
    Corrupt(String, String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parse a stored JSON object column.
pub(crate) fn parse_object(id: &str, text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Corrupt(id.to_owned(), "expected a JSON object".into())),
        Err(e) => Err(Error::Corrupt(id.to_owned(), e.to_string())),
    }
}

/// Is this database error a unique-constraint violation?
pub(crate) fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// Is this database error a foreign-key violation?
pub(crate) fn is_fk_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)))
}

/// Driver errors of the few writes that bypass sea-orm, in sea-orm's shape,
/// so callers see one error type and `sql_err()` still classifies them.
impl From<sea_orm::sqlx::Error> for Error {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        Error::Db(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e))))
    }
}
