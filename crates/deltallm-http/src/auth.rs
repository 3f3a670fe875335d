//! Presented credentials: `Authorization: Bearer <key>` or `X-Master-Key`.

use http::{HeaderMap, HeaderName};

/// A constant, so looking it up needs no parsing of the name per request.
const MASTER_KEY_HEADER: HeaderName = HeaderName::from_static("x-master-key");

/// The key a caller presented, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    key_from(
        headers.get(MASTER_KEY_HEADER).map(|v| v.as_bytes()),
        headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
    )
}

/// The key in an `X-Master-Key` value, else in an `Authorization: Bearer`
/// value. A value that is not tab and visible ASCII (what
/// `HeaderValue::to_str` accepts) counts as absent. Shared by the routes
/// behind hyper and the lean HTTP/1.1 path, which reads raw header bytes.
pub(crate) fn key_from<'a>(master: Option<&'a [u8]>, authorization: Option<&'a [u8]>) -> Option<&'a str> {
    master.and_then(visible).map(str::trim_ascii).or_else(|| {
        let value = authorization.and_then(visible)?.trim_ascii();
        let space = memchr::memchr(b' ', value.as_bytes())?;
        let (scheme, token) = (&value[..space], &value[space + 1..]);
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_ascii())
    })
}

fn visible(value: &[u8]) -> Option<&str> {
    // Every byte is looked at (no early exit), so the check runs 16 or 32
    // bytes at a time; a key is read on every request.
    let ok = value.iter().fold(true, |ok, &b| ok & ((0x20..0x7f).contains(&b) | (b == b'\t')));
    if ok { std::str::from_utf8(value).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::key_from;

    #[test]
    fn the_master_key_header_wins_then_a_bearer_token() {
        assert_eq!(key_from(Some(b" sk-a "), Some(b"Bearer sk-b")), Some("sk-a"));
        assert_eq!(key_from(None, Some(b"bearer  sk-b ")), Some("sk-b"));
        assert_eq!(key_from(None, Some(b"Basic sk-b")), None);
        assert_eq!(key_from(None, Some(b"Bearer")), None);
        // Not visible ASCII: absent, so the other header is read.
        assert_eq!(key_from(Some(b"sk-\xff"), Some(b"Bearer sk-b")), Some("sk-b"));
        assert_eq!(key_from(None, Some(b"Bearer sk-\x01")), None);
    }
}
