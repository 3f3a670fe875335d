//! Error kinds shared by every layer, and the one table that maps them to HTTP.

/// The public classes of failure. One table (`status`, `openai_type`) maps each
/// to the HTTP status and the OpenAI error `type` (spec CONV-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiErrorKind {
    /// 400 `invalid_request_error`.
    InvalidRequest,
    /// 401 `authentication_error`.
    Authentication,
    /// 403 `permission_denied`.
    PermissionDenied,
    /// 404 `model_not_found` on the proxy; plain not found on admin routes.
    NotFound,
    /// 404 `invalid_request_error`: no such route.
    UnknownRoute,
    /// 405 `invalid_request_error`: the route exists, the method does not.
    MethodNotAllowed,
    /// 408 `timeout_error`.
    Timeout,
    /// 409 conflict (admin only).
    Conflict,
    /// 413 body too large.
    PayloadTooLarge,
    /// 422 malformed JSON body on admin routes (CONV-1).
    Unprocessable,
    /// 429 `rate_limit_error`.
    RateLimited,
    /// 503 `service_unavailable`.
    ServiceUnavailable,
    /// 503 `gateway_capacity_error`.
    GatewayCapacity,
    /// 500 `server_error`; details go to logs, never to the body.
    Internal,
}

impl ApiErrorKind {
    /// HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::PermissionDenied => 403,
            Self::NotFound | Self::UnknownRoute => 404,
            Self::MethodNotAllowed => 405,
            Self::Timeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::Unprocessable => 422,
            Self::RateLimited => 429,
            Self::ServiceUnavailable | Self::GatewayCapacity => 503,
            Self::Internal => 500,
        }
    }

    /// The OpenAI-shaped error `type` (CONV-2).
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::Unprocessable
            | Self::PayloadTooLarge
            | Self::Conflict
            | Self::UnknownRoute
            | Self::MethodNotAllowed => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "model_not_found",
            Self::Timeout => "timeout_error",
            Self::RateLimited => "rate_limit_error",
            Self::ServiceUnavailable => "service_unavailable",
            Self::GatewayCapacity => "gateway_capacity_error",
            Self::Internal => "server_error",
        }
    }

    /// Low-cardinality label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Authentication => "authentication",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::UnknownRoute => "unknown_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Timeout => "timeout",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unprocessable => "unprocessable",
            Self::RateLimited => "rate_limited",
            Self::ServiceUnavailable => "service_unavailable",
            Self::GatewayCapacity => "gateway_capacity",
            Self::Internal => "internal",
        }
    }
}

/// A domain rule violation, already phrased for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Input breaks a validation rule (400).
    #[error("{0}")]
    Invalid(String),
    /// A referenced record does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A uniqueness or in-use rule (409).
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// The API error kind this maps to.
    pub fn kind(&self) -> ApiErrorKind {
        match self {
            Self::Invalid(_) => ApiErrorKind::InvalidRequest,
            Self::NotFound(_) => ApiErrorKind::NotFound,
            Self::Conflict(_) => ApiErrorKind::Conflict,
        }
    }
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
