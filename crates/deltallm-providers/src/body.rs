//! The client's JSON body, parsed once at the top level, and a writer that
//! assembles upstream bodies from raw JSON pieces.
//!
//! Values the gateway does not touch (messages, tools, ...) stay as borrowed
//! `RawValue` slices of the request bytes: they are validated once by the
//! parser and copied verbatim into the upstream body, never re-parsed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

mod scan;

pub(crate) use scan::plain_run;

/// A top-level key. Borrowed from the input unless it contained escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Top-level fields in document order. A repeated key keeps its first
/// position and its last value, as JSON parsers conventionally do.
struct Fields<'a>(Vec<(Cow<'a, str>, Raw<'a>)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    insert(&mut fields, k, Raw(v.get()));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

fn insert<'a>(fields: &mut Vec<(Cow<'a, str>, Raw<'a>)>, key: Cow<'a, str>, value: Raw<'a>) {
    match fields.iter_mut().find(|(existing, _)| *existing == key) {
        Some(slot) => slot.1 = value,
        None => fields.push((key, value)),
    }
}

/// One JSON value of the request as the client wrote it (no surrounding
/// whitespace), already validated as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }

    /// Text the caller has already validated as one JSON value.
    pub(crate) fn validated(json: &'a str) -> Self {
        Self(json)
    }
}

/// The client's JSON body: top-level fields as borrowed raw JSON.
#[derive(Debug, Clone)]
pub struct RequestBody<'a> {
    fields: Vec<(Cow<'a, str>, Raw<'a>)>,
}

impl<'a> RequestBody<'a> {
    /// Parse a request body. Invalid JSON or a non-object → InvalidRequest.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
        if first != Some(b'{') {
            return Err(Error::invalid(invalid_json_message(bytes)));
        }
        // One UTF-8 check up front lets the parser borrow every string and
        // raw value without checking each again (`from_slice` does).
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::invalid(format!("Invalid JSON body: not valid UTF-8 at byte {}", e.valid_up_to())))?;
        if let Some(fields) = scan::object(text) {
            return Ok(Self { fields });
        }
        // The scan accepts only what serde_json accepts; whatever it turns
        // down goes to serde_json, which either accepts it after all or
        // says what is wrong with it.
        let Fields(fields) =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("Invalid JSON body: {e}")))?;
        Ok(Self { fields })
    }

    /// Raw value of a top-level key.
    pub fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Does the body have this key (with any value, `null` included)?
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// `model` when it is a string.
    pub fn model(&self) -> Option<Cow<'a, str>> {
        self.get("model").and_then(raw_str)
    }

    /// `stream: true`.
    pub fn stream(&self) -> bool {
        self.get("stream").is_some_and(|v| v.get() == "true")
    }

    /// Deserialize one field; `None` when absent, InvalidRequest naming the
    /// field when it has the wrong shape.
    pub fn parse_field<T: Deserialize<'a>>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| Error::invalid(format!("Invalid '{key}' field: {e}"))),
        }
    }

    /// Top-level fields in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Raw<'a>)> + '_ {
        self.fields.iter().map(|(k, v)| (k.as_ref(), *v))
    }
}

fn invalid_json_message(bytes: &[u8]) -> String {
    match serde_json::from_slice::<de::IgnoredAny>(bytes) {
        Err(e) => format!("Invalid JSON body: {e}"),
        Ok(_) => "Request body must be a JSON object".to_owned(),
    }
}

/// A JSON string value, borrowed when it has no escapes.
pub(crate) fn raw_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Writes one JSON object field by field into a byte buffer.
pub(crate) struct ObjectWriter {
    buf: Vec<u8>,
    empty: bool,
}

impl ObjectWriter {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(b'{');
        Self { buf, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        // Field names are plain ASCII words: quote them as they are and leave
        // escaping to serde for the rare name that needs it.
        // The check looks at every byte (no early exit), which vectorizes.
        if !key.bytes().fold(false, |escape, b| escape | (b == b'"') | (b == b'\\') | (b < 0x20)) {
            self.buf.reserve(key.len() + 3);
            self.buf.push(b'"');
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.extend_from_slice(b"\":");
            return;
        }
        // Writing a &str into a Vec cannot fail; the fallback keeps the output
        // valid JSON even so.
        if serde_json::to_writer(&mut self.buf, key).is_err() {
            self.buf.extend_from_slice(b"\"\"");
        }
        self.buf.push(b':');
    }

    /// A field whose value is already valid JSON text.
    pub(crate) fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.buf.extend_from_slice(json.as_bytes());
    }

    /// A field serialized from a Rust value.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        self.key(key);
        serde_json::to_writer(&mut self.buf, value).map_err(|e| Error::invalid(format!("Cannot encode '{key}': {e}")))
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_top_level_without_touching_values() {
        let bytes = br#" {"model":"gpt","messages":[{"role":"user","content":"hi \"x\""}],"stream":true,"n":1} "#;
        let body = RequestBody::parse(bytes).unwrap();
        assert_eq!(body.model().as_deref(), Some("gpt"));
        assert!(body.stream());
        assert_eq!(body.get("messages").unwrap().get(), r#"[{"role":"user","content":"hi \"x\""}]"#);
        let keys: Vec<&str> = body.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["model", "messages", "stream", "n"]);
    }

    #[test]
    fn escaped_keys_and_values_and_duplicates() {
        let body = RequestBody::parse(br#"{"mo\u0064el":"a\/b","x":1,"x":2}"#).unwrap();
        assert_eq!(body.model().as_deref(), Some("a/b"));
        assert_eq!(body.get("x").unwrap().get(), "2");
        assert_eq!(body.iter().count(), 2);
        assert!(!body.stream());
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        for (bytes, want) in [
            (&b"[1,2]"[..], "must be a JSON object"),
            (b"", "Invalid JSON body"),
            (b"\"s\"", "must be a JSON object"),
            (b"{\"a\":", "Invalid JSON body"),
            (b"{nope}", "Invalid JSON body"),
            (b"[1,", "Invalid JSON body"),
            (b"{\"model\":\"m\xff\"}", "not valid UTF-8 at byte 11"),
            (b"{\"a\":1,\"a\":\"\xc3\"}", "not valid UTF-8 at byte 12"),
        ] {
            let err = RequestBody::parse(bytes).unwrap_err();
            assert_eq!(err.class, crate::ErrorClass::InvalidRequest);
            assert!(err.message.contains(want), "{:?}: {}", String::from_utf8_lossy(bytes), err.message);
        }
    }

    #[test]
    fn writer_builds_valid_json() {
        let mut w = ObjectWriter::with_capacity(16);
        w.raw("a", "[1,2]");
        w.value("k\"ey", "v").unwrap();
        w.raw("back\\slash\ttab", "1");
        w.raw("ünï", "2");
        let v: serde_json::Value = serde_json::from_slice(&w.finish()).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2], "k\"ey": "v", "back\\slash\ttab": 1, "ünï": 2}));
    }
}
