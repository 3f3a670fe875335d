//! Access-group keys (VAL-9).

use serde_json::Value;

use crate::{Error, Result};

/// Most keys one list may hold.
pub const MAX_KEYS: usize = 100;

/// Normalize one key: trimmed, lower-cased, `^[a-z0-9][a-z0-9._-]{0,63}$`.
pub fn normalize_key(raw: &str) -> Result<String> {
    let key = raw.trim().to_ascii_lowercase();
    let bytes = key.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(key)
    } else {
        Err(Error::invalid(format!(
            "Invalid access group '{}': use lowercase letters, numbers, '.', '_' or '-', starting with a letter or number (at most 64 characters)",
            raw.trim()
        )))
    }
}

/// Normalize a list as sent by a client: `null` = empty, must be an array of
/// strings, deduplicated, at most 100 keys, returned sorted.
pub fn normalize_list(value: Option<&Value>, field: &str) -> Result<Vec<String>> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Error::invalid(format!("{field} must be an array of strings")));
        }
    };
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(Error::invalid(format!("{field} must be an array of strings")));
        };
        keys.push(normalize_key(s)?);
    }
    keys.sort();
    keys.dedup();
    if keys.len() > MAX_KEYS {
        return Err(Error::invalid(format!("{field} may hold at most {MAX_KEYS} access groups")));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn edge_2_dedupes_lowercases_and_sorts() {
        let v = json!(["Beta", "support", "beta"]);
        assert_eq!(normalize_list(Some(&v), "access_groups").unwrap(), vec!["beta", "support"]);
    }

    #[test]
    fn val_9_table() {
        let ok = [("a", "a"), (" Team.One_2-x ", "team.one_2-x"), ("0abc", "0abc")];
        for (raw, want) in ok {
            assert_eq!(normalize_key(raw).unwrap(), want);
        }
        let long = "a".repeat(65);
        for bad in ["", "  ", "-abc", ".abc", "has space", "ümlaut", "a/b", long.as_str()] {
            assert!(normalize_key(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(normalize_list(Some(&Value::Null), "f").unwrap(), Vec::<String>::new());
        assert!(normalize_list(Some(&json!("beta")), "f").is_err());
        assert!(normalize_list(Some(&json!([1])), "f").is_err());
        let too_many: Vec<String> = (0..101).map(|i| format!("g{i}")).collect();
        assert!(normalize_list(Some(&json!(too_many)), "f").is_err());
        let exactly: Vec<String> = (0..100).map(|i| format!("g{i}")).collect();
        assert_eq!(normalize_list(Some(&json!(exactly)), "f").unwrap().len(), 100);
    }
}
