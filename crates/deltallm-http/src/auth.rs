//! Presented credentials: `Authorization: Bearer <key>` or `X-Master-Key`.

use http::{HeaderMap, HeaderName};

/// A constant, so looking it up needs no parsing of the name per request.
const MASTER_KEY_HEADER: HeaderName = HeaderName::from_static("x-master-key");

/// The key a caller presented, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(MASTER_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
