//! Error rendering: `{"detail"}` for admin routes (CONV-1), the OpenAI error
//! object for `/v1` (CONV-2).

use axum::Json;
use axum::response::{IntoResponse, Response};
use deltallm_core::Error;
use http::{HeaderValue, StatusCode};
use serde_json::json;

fn status(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An admin-route error.
#[derive(Debug)]
pub struct AdminError(pub Error);

impl<E: Into<Error>> From<E> for AdminError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (status(&self.0), Json(json!({ "detail": self.0.message }))).into_response()
    }
}

/// A `/v1` error in the OpenAI shape.
#[derive(Debug)]
pub struct ProxyError(pub Error);

impl<E: Into<Error>> From<E> for ProxyError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({
            "error": {
                "message": e.message,
                "type": e.kind.openai_type(),
                "param": e.param,
                "code": e.code,
            }
        });
        let mut resp = (status(&e), Json(body)).into_response();
        if let Some(after) = e.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
