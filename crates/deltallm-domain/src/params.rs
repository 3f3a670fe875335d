//! `deltallm_params` helpers: connection fields, secret split, typed reads.

use serde_json::{Map, Value};

use crate::{Error, Result, redaction};

/// The nine inline connection fields (CRED-5) a named credential can supply.
pub const CONNECTION_FIELDS: [&str; 9] = [
    "api_key",
    "api_base",
    "api_version",
    "auth_header_name",
    "auth_header_format",
    "region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

/// Split a params map into the part stored in clear and the secret part that
/// must be encrypted at rest (CRED-10). Top-level keys only: every CRED-7
/// secret key goes to the secret side, whatever its value type.
pub fn split_secrets(map: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let mut public = Map::new();
    let mut secret = Map::new();
    for (k, v) in map {
        if redaction::is_secret_key(k) {
            secret.insert(k.clone(), v.clone());
        } else {
            public.insert(k.clone(), v.clone());
        }
    }
    (public, secret)
}

/// Take every CRED-7 secret key out of a free-form document (any depth), for
/// sealing at rest (CRED-10). Returns `(JSON pointer, value)` pairs; the
/// document keeps only what may be stored in clear.
pub fn extract_secrets_deep(value: &mut Value) -> Vec<(String, Value)> {
    extract_secrets_deep_by(value, |k, _| redaction::is_secret_key(k))
}

/// Like [`extract_secrets_deep`] with the rule `is_secret(key, value)`.
pub fn extract_secrets_deep_by(value: &mut Value, is_secret: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
    fn walk(
        value: &mut Value,
        path: &mut String,
        out: &mut Vec<(String, Value)>,
        is_secret: &dyn Fn(&str, &Value) -> bool,
    ) {
        let len = path.len();
        match value {
            Value::Object(map) => {
                let secret_keys: Vec<String> =
                    map.iter().filter(|(k, v)| is_secret(k, v)).map(|(k, _)| k.clone()).collect();
                for k in secret_keys {
                    if let Some(v) = map.remove(&k) {
                        out.push((format!("{path}/{}", escape_pointer(&k)), v));
                    }
                }
                for (k, v) in map.iter_mut() {
                    path.push('/');
                    path.push_str(&escape_pointer(k));
                    walk(v, path, out, is_secret);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    path.push_str(&format!("/{i}"));
                    walk(v, path, out, is_secret);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut String::new(), &mut out, &is_secret);
    out
}

/// Put secrets taken by [`extract_secrets_deep`] back in place. Pairs whose
/// parent no longer exists are dropped.
pub fn restore_secrets_deep(value: &mut Value, secrets: Vec<(String, Value)>) {
    for (pointer, v) in secrets {
        let Some((parent, last)) = pointer.rsplit_once('/') else {
            continue;
        };
        let key = last.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Object(map)) = value.pointer_mut(parent) {
            map.insert(key, v);
        }
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Append `<prefix>.<key>` for every key whose value differs between the two
/// maps, in key order (audit `changed_fields`, ADM-9: names, never values).
pub fn changed_keys(prefix: &str, before: &Map<String, Value>, after: &Map<String, Value>, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    out.extend(keys.into_iter().filter(|k| before.get(*k) != after.get(*k)).map(|k| format!("{prefix}.{k}")));
}

/// Non-empty string value of a key, trimmed.
pub fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// Optional integer field (VAL-10): absent/null → None; must be an integer
/// (a float with no fraction is accepted) within `min..`.
pub fn int_field(map: &Map<String, Value>, key: &str, path: &str, min: i64) -> Result<Option<i64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64));
            match v {
                Some(v) if v >= min => Ok(Some(v)),
                Some(_) => Err(Error::invalid(format!("{path} must be >= {min}"))),
                None => Err(Error::invalid(format!("{path} must be an integer"))),
            }
        }
        Some(_) => Err(Error::invalid(format!("{path} must be an integer"))),
    }
}

/// Optional number field (VAL-10): absent/null → None; must be a finite number ≥ `min`.
pub fn number_field(map: &Map<String, Value>, key: &str, path: &str, min: f64) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= min => Ok(Some(v)),
            _ => Err(Error::invalid(format!("{path} must be a number >= {min}"))),
        },
        Some(_) => Err(Error::invalid(format!("{path} must be a number"))),
    }
}

/// Optional string field: absent/null → None; otherwise must be a string.
pub fn string_field<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Error::invalid(format!("{path} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_split_off() {
        let m = json!({"api_key": "k", "api_base": "b", "aws_secret_access_key": "s", "model": "m", "max_tokens": 3});
        let (public, secret) = split_secrets(m.as_object().unwrap());
        assert_eq!(Value::Object(public), json!({"api_base": "b", "model": "m", "max_tokens": 3}));
        assert_eq!(Value::Object(secret), json!({"api_key": "k", "aws_secret_access_key": "s"}));
    }

    #[test]
    fn deep_secrets_round_trip() {
        let original = json!({
            "team": "ml",
            "owner_token": "t-1",
            "nested": {"a/b~c": {"password": "p"}, "max_tokens": 4},
            "list": [{"client_secret": "s"}, "plain"]
        });
        let mut doc = original.clone();
        let secrets = extract_secrets_deep(&mut doc);
        assert_eq!(doc, json!({"team": "ml", "nested": {"a/b~c": {}, "max_tokens": 4}, "list": [{}, "plain"]}));
        assert_eq!(secrets.len(), 3);
        assert!(!doc.to_string().contains("t-1"));
        restore_secrets_deep(&mut doc, secrets);
        assert_eq!(doc, original);
    }

    #[test]
    fn typed_fields() {
        let m = json!({"a": 3, "b": 3.0, "c": 3.5, "d": "3", "e": -1});
        let m = m.as_object().unwrap();
        assert_eq!(int_field(m, "a", "p.a", 1).unwrap(), Some(3));
        assert_eq!(int_field(m, "b", "p.b", 1).unwrap(), Some(3));
        assert!(int_field(m, "c", "p.c", 1).is_err());
        assert!(int_field(m, "d", "p.d", 1).is_err());
        assert!(int_field(m, "e", "p.e", 0).is_err());
        assert_eq!(int_field(m, "zz", "p.zz", 1).unwrap(), None);
        assert!(number_field(m, "d", "p.d", 0.0).is_err());
        assert_eq!(number_field(m, "c", "p.c", 0.0).unwrap(), Some(3.5));
    }
}
