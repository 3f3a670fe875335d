//! The core error: a public kind, a user-facing message, and nothing internal.

use std::borrow::Cow;
use std::time::Duration;

use deltallm_domain::ApiErrorKind;

/// An error on its way to a client. `message` is safe to show; internals are
/// logged where the error is created and never carried here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Public class (status and OpenAI `type`).
    pub kind: ApiErrorKind,
    /// User-facing message.
    pub message: String,
    /// OpenAI `code` (e.g. `no_healthy_deployments`).
    pub code: Option<Cow<'static, str>>,
    /// OpenAI `param`.
    pub param: Option<Cow<'static, str>>,
    /// `Retry-After` for 429s.
    pub retry_after: Option<Duration>,
}

impl Error {
    /// A new error.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), code: None, param: None, retry_after: None }
    }

    /// 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::InvalidRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::NotFound, message)
    }

    /// 500 with a generic message; log the cause before calling.
    pub fn internal() -> Self {
        Self::new(ApiErrorKind::Internal, "Internal server error")
    }

    /// Attach an OpenAI error code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(Cow::Borrowed(code));
        self
    }

    /// Attach an OpenAI error param.
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(Cow::Borrowed(param));
        self
    }
}

impl From<deltallm_domain::Error> for Error {
    fn from(e: deltallm_domain::Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<deltallm_storage::Error> for Error {
    fn from(e: deltallm_storage::Error) -> Self {
        use deltallm_storage::Error as S;
        match e {
            S::Conflict(m) => Self::new(ApiErrorKind::Conflict, m),
            S::NotFound(m) => Self::not_found(m),
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::internal()
            }
        }
    }
}

/// Result with the core error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
