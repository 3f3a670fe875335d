//! The provider error and its classification (RUN-11, RUN-12).
//!
//! The router reads only `class`, `status`, `retry_after`, [`Error::retryable`]
//! and [`Error::health_affecting`]; it never matches on message text. `message`
//! is the internal detail (logs, deployment `last_error`); the client sees
//! [`Error::client_message`], which never carries upstream internals of a 5xx.

use std::time::{Duration, SystemTime};

use deltallm_domain::ApiErrorKind;
use http::HeaderMap;
use serde::Deserialize;

/// Result with the provider error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The attempt deadline or the HTTP read timeout passed (or upstream 408).
    Timeout,
    /// Upstream 429.
    RateLimit,
    /// Upstream 4xx saying the prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// Upstream 4xx from a content filter / safety system.
    ContentPolicyViolation,
    /// Upstream status ≥ 500.
    Upstream5xx,
    /// Any other upstream 4xx.
    UpstreamClient,
    /// Connection refused/reset, TLS failure, or a stream cut short.
    Transport,
    /// Rejected locally before anything was sent: bad body, missing key,
    /// unsupported provider or endpoint.
    InvalidRequest,
}

impl ErrorClass {
    /// Low-cardinality label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::RateLimit => "rate_limit",
            Self::ContextWindowExceeded => "context_window_exceeded",
            Self::ContentPolicyViolation => "content_policy_violation",
            Self::Upstream5xx => "upstream_5xx",
            Self::UpstreamClient => "upstream_4xx",
            Self::Transport => "transport",
            Self::InvalidRequest => "invalid_request",
        }
    }
}

/// One failed upstream attempt (or a request rejected before sending).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Classification the router acts on.
    pub class: ErrorClass,
    /// Upstream HTTP status, when a response was received.
    pub status: Option<u16>,
    /// Internal detail. Never contains a secret or a request URL.
    pub message: String,
    /// Upstream `Retry-After` (seconds or HTTP date), when sent.
    pub retry_after: Option<Duration>,
    /// The upstream's `error.code` and `error.param` on a plain 4xx, passed on
    /// to clients so OpenAI SDK users see the same fields as upstream.
    pub upstream_fields: Option<Box<UpstreamFields>>,
}

/// `code` and `param` of an upstream OpenAI-style error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamFields {
    /// `error.code`.
    pub code: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
}

impl Error {
    /// A local rejection (400) with a user-facing message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::InvalidRequest,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream_fields: None,
        }
    }

    /// Name the request field a local rejection is about (OpenAI `param`).
    pub fn with_param(mut self, param: &str) -> Self {
        self.upstream_fields.get_or_insert_with(Box::default).param = Some(param.to_owned());
        self
    }

    /// A deadline or read timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Timeout,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream_fields: None,
        }
    }

    /// A connection-level failure.
    pub fn transport(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transport,
            status: None,
            message: message.into(),
            retry_after: None,
            upstream_fields: None,
        }
    }

    /// RUN-11 default retry set: timeouts, transport failures, 408/429/502/503/504.
    /// A plain 500 is health-affecting but not retried on the same deployment.
    pub fn retryable(&self) -> bool {
        match self.class {
            ErrorClass::Timeout | ErrorClass::RateLimit | ErrorClass::Transport => true,
            ErrorClass::Upstream5xx => matches!(self.status, Some(502..=504)),
            _ => false,
        }
    }

    /// RUN-11: timeouts, transport, 429 and ≥500 count against deployment health;
    /// client-side problems never do.
    pub fn health_affecting(&self) -> bool {
        matches!(
            self.class,
            ErrorClass::Timeout | ErrorClass::Transport | ErrorClass::RateLimit | ErrorClass::Upstream5xx
        )
    }

    /// RUN-12 mapping to the public error kind.
    pub fn api_kind(&self) -> ApiErrorKind {
        match self.class {
            ErrorClass::Timeout => ApiErrorKind::Timeout,
            ErrorClass::RateLimit => ApiErrorKind::RateLimited,
            ErrorClass::Upstream5xx | ErrorClass::Transport => ApiErrorKind::ServiceUnavailable,
            ErrorClass::ContextWindowExceeded
            | ErrorClass::ContentPolicyViolation
            | ErrorClass::UpstreamClient
            | ErrorClass::InvalidRequest => ApiErrorKind::InvalidRequest,
        }
    }

    /// RUN-12 client-facing message. 5xx and transport details stay internal.
    pub fn client_message(&self) -> String {
        match self.class {
            ErrorClass::Timeout => "Upstream provider request timed out".to_owned(),
            ErrorClass::RateLimit => "Upstream provider rate limit exceeded".to_owned(),
            ErrorClass::Upstream5xx => match self.status {
                Some(status) => format!("Provider error: {status}"),
                None => "Provider error".to_owned(),
            },
            ErrorClass::Transport => "Provider error: upstream connection failed".to_owned(),
            ErrorClass::ContextWindowExceeded
            | ErrorClass::ContentPolicyViolation
            | ErrorClass::UpstreamClient
            | ErrorClass::InvalidRequest => self.message.clone(),
        }
    }

    /// Classify a non-success upstream response from its status, headers and body.
    pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let detail = ErrorDetail::parse(body);
        let message = detail.message.unwrap_or_else(|| format!("Upstream returned status {status}"));
        let class = match status {
            429 => ErrorClass::RateLimit,
            408 => ErrorClass::Timeout,
            500.. => ErrorClass::Upstream5xx,
            _ => {
                let haystack = format!("{} {} {}", message, detail.code, detail.kind).to_ascii_lowercase();
                classify_client_text(&haystack)
            }
        };
        let retry_after = if status == 429 || status == 503 { retry_after(headers, SystemTime::now()) } else { None };
        let upstream_fields = (class == ErrorClass::UpstreamClient
            && (detail.code_field.is_some() || detail.param.is_some()))
        .then(|| Box::new(UpstreamFields { code: detail.code_field.clone(), param: detail.param.clone() }));
        Self { class, status: Some(status), message, retry_after, upstream_fields }
    }

    /// Classify a reqwest failure. The URL is stripped first: it may carry a
    /// query with credentials, and it has no place in a client message.
    pub fn from_reqwest(err: reqwest::Error) -> Self {
        let timed_out = err.is_timeout();
        let err = err.without_url();
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        if timed_out { Self::timeout(format!("Upstream read timed out ({message})")) } else { Self::transport(message) }
    }
}

impl From<deltallm_domain::Error> for Error {
    fn from(err: deltallm_domain::Error) -> Self {
        Self::invalid(err.to_string())
    }
}

/// RUN-11 text classes for a 4xx.
fn classify_client_text(haystack: &str) -> ErrorClass {
    const CONTEXT: [&str; 6] = [
        "context_length_exceeded",
        "maximum context length",
        "too many tokens",
        "context window",
        "prompt is too long",
        "input is too long",
    ];
    const POLICY: [&str; 5] = ["content_filter", "safety system", "content_policy", "content policy", "responsible ai"];
    if CONTEXT.iter().any(|p| haystack.contains(p)) {
        ErrorClass::ContextWindowExceeded
    } else if POLICY.iter().any(|p| haystack.contains(p)) {
        ErrorClass::ContentPolicyViolation
    } else {
        ErrorClass::UpstreamClient
    }
}

/// The fields of an upstream error body that matter. OpenAI, Anthropic and
/// Gemini all nest them under `error`; some compatible servers use a bare
/// `error` string, `message` or `detail`.
#[derive(Default)]
struct ErrorDetail {
    message: Option<String>,
    code: String,
    kind: String,
    /// `error.code` when it is a non-empty string.
    code_field: Option<String>,
    /// `error.param` when it is a non-empty string.
    param: Option<String>,
}

impl ErrorDetail {
    fn parse(body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Option<serde_json::Value>,
            message: Option<serde_json::Value>,
            detail: Option<serde_json::Value>,
        }
        let text_of = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = (!text.is_empty()).then(|| truncate(text, 500));
            return Self { message, ..Self::default() };
        };
        let mut out = Self::default();
        match env.error {
            Some(serde_json::Value::Object(obj)) => {
                out.message = obj.get("message").map(text_of).filter(|m| !m.is_empty());
                out.code = obj.get("code").map(text_of).unwrap_or_default();
                out.kind = obj.get("type").or_else(|| obj.get("status")).map(text_of).unwrap_or_default();
                let string_of =
                    |k: &str| obj.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).map(|v| truncate(v, 200));
                out.code_field = string_of("code");
                out.param = string_of("param");
            }
            Some(serde_json::Value::String(s)) => out.message = Some(s),
            _ => {}
        }
        if out.message.is_none() {
            out.message = env.message.or(env.detail).map(|v| text_of(&v)).filter(|m| !m.is_empty());
        }
        out.message = out.message.map(|m| truncate(&m, 2000));
        out
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((idx, _)) => format!("{}…", &text[..idx]),
        None => text.to_owned(),
    }
}

/// `Retry-After` as delta-seconds or an HTTP date; OpenAI's `retry-after-ms`
/// is more precise and wins when present.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn status_classes_follow_run_11() {
        let h = HeaderMap::new();
        let cases = [
            (429, ErrorClass::RateLimit, true, true),
            (408, ErrorClass::Timeout, true, true),
            (500, ErrorClass::Upstream5xx, false, true),
            (502, ErrorClass::Upstream5xx, true, true),
            (503, ErrorClass::Upstream5xx, true, true),
            (504, ErrorClass::Upstream5xx, true, true),
            (400, ErrorClass::UpstreamClient, false, false),
            (401, ErrorClass::UpstreamClient, false, false),
        ];
        for (status, class, retry, health) in cases {
            let e = Error::from_response(status, &h, b"{}");
            assert_eq!((e.class, e.retryable(), e.health_affecting()), (class, retry, health), "{status}");
            assert_eq!(e.status, Some(status));
        }
    }

    #[test]
    fn text_classes_from_upstream_bodies() {
        let h = HeaderMap::new();
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#;
        assert_eq!(Error::from_response(400, &h, ctx).class, ErrorClass::ContextWindowExceeded);
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert_eq!(Error::from_response(400, &h, anthropic).class, ErrorClass::ContextWindowExceeded);
        let filter = br#"{"error":{"message":"The response was filtered","code":"content_filter"}}"#;
        assert_eq!(Error::from_response(400, &h, filter).class, ErrorClass::ContentPolicyViolation);
        let plain = br#"{"error":{"message":"Invalid value for 'temperature'"}}"#;
        let e = Error::from_response(400, &h, plain);
        assert_eq!(e.class, ErrorClass::UpstreamClient);
        assert_eq!(e.client_message(), "Invalid value for 'temperature'");
        assert_eq!(e.api_kind(), ApiErrorKind::InvalidRequest);
    }

    #[test]
    fn message_fallbacks() {
        let h = HeaderMap::new();
        assert_eq!(Error::from_response(404, &h, br#"{"error":"no such model"}"#).message, "no such model");
        assert_eq!(Error::from_response(422, &h, br#"{"detail":"bad"}"#).message, "bad");
        assert_eq!(Error::from_response(400, &h, b"plain text oops").message, "plain text oops");
        assert_eq!(Error::from_response(400, &h, b"").message, "Upstream returned status 400");
    }

    #[test]
    fn five_hundreds_hide_upstream_detail_from_clients() {
        let e = Error::from_response(503, &HeaderMap::new(), br#"{"error":{"message":"node gpu-7 oom at 10.0.0.3"}}"#);
        assert_eq!(e.client_message(), "Provider error: 503");
        assert_eq!(e.api_kind(), ApiErrorKind::ServiceUnavailable);
        assert!(e.message.contains("gpu-7"), "internal detail kept for logs");
    }

    #[test]
    fn retry_after_seconds_date_and_ms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(&headers(&[("retry-after", "7")]), now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &date)]), now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &past)]), now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7"), ("retry-after-ms", "1500")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        let e = Error::from_response(429, &headers(&[("retry-after", "3")]), b"{}");
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(e.api_kind(), ApiErrorKind::RateLimited);
    }
}
