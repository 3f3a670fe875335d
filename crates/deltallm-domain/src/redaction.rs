//! Redaction of secrets in anything shown to a user (CRED-7).

use serde_json::Value;

pub use crate::secret::REDACTED;

/// Keys that are always shown even though their name looks secret.
const SHOWN: &[&str] = &[
    "api_base",
    "api_version",
    "auth_header_format",
    "auth_header_name",
    "region",
    "provider",
    "endpoint",
    "base_url",
    "max_tokens",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_input_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
];

/// Is a value stored under `key` a secret? Case-insensitive: `api_key`, `aws_*`,
/// anything containing `password`/`secret`/`token`, ending `_key` or equal to
/// `key` — except the keys of the always-shown list. Beyond CRED-7, HTTP
/// header names that carry credentials count too (`Authorization`,
/// `Proxy-Authorization`, anything ending `-key` such as `x-api-key`), since
/// they appear in `default_params.extra_headers`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if SHOWN.contains(&k.as_str()) {
        return false;
    }
    k == "api_key"
        || k == "key"
        || k.starts_with("aws_")
        || k.ends_with("_key")
        || k.ends_with("-key")
        || k == "authorization"
        || k == "proxy-authorization"
        || k.contains("password")
        || k.contains("secret")
        || k.contains("token")
}

fn mask_all(value: &mut Value) {
    match value {
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::Array(items) => {
            for item in items {
                mask_all(item);
            }
        }
        Value::Object(map) => {
            for v in map.values_mut() {
                mask_all(v);
            }
        }
        other => *other = Value::String(REDACTED.to_owned()),
    }
}

/// Redact in place: secret keys' values are masked (non-empty list elements
/// too), objects are walked recursively.
pub fn redact_in_place(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    mask_all(v);
                } else {
                    redact_in_place(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_in_place),
        _ => {}
    }
}

/// A redacted copy.
pub fn redacted(value: &Value) -> Value {
    let mut copy = value.clone();
    redact_in_place(&mut copy);
    copy
}

/// Is this `model_info` value a credential to mask and seal? Prices and
/// limits (`input_cost_per_token`, `tpm_limit`, ...) match the secret-key
/// rule by name but are numbers, and numbers are never credentials.
pub fn is_model_info_secret(key: &str, value: &Value) -> bool {
    is_secret_key(key) && !value.is_number()
}

/// Redact a `model_info` document: secret-named values are masked at any
/// depth, except numbers (see [`is_model_info_secret`]).
pub fn redacted_model_info(value: &Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if is_model_info_secret(k, v) {
                        mask_all(v);
                    } else {
                        walk(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut copy = value.clone();
    walk(&mut copy);
    copy
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cred_7_keys() {
        for k in [
            "api_key",
            "API_KEY",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "db_password",
            "client_secret",
            "refresh_token",
            "private_key",
            "key",
            "x-api-key",
            "Authorization",
            "Proxy-Authorization",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "api_base",
            "api_version",
            "auth_header_format",
            "auth_header_name",
            "region",
            "provider",
            "max_tokens",
            "max_total_input_tokens",
            "total_tokens",
            "model",
            "keyboard",
            "timeout",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn model_info_keeps_prices_and_masks_credentials() {
        let v = json!({"input_cost_per_token": 0.000001, "tpm_limit": 1000,
                       "default_params": {"extra_body": {"client_secret": "k1"}}, "webhook_token": "t1"});
        let r = redacted_model_info(&v);
        assert_eq!(r["input_cost_per_token"], 0.000001);
        assert_eq!(r["tpm_limit"], 1000);
        assert_eq!(r["default_params"]["extra_body"]["client_secret"], REDACTED);
        assert_eq!(r["webhook_token"], REDACTED);
    }

    #[test]
    fn redaction_recurses_and_masks_list_elements() {
        let v = json!({
            "api_key": "sk-1",
            "api_base": "http://x",
            "empty_key": "",
            "nested": {"client_secret": "s", "max_tokens": 5, "deeper": [{"token": "t"}]},
            "tokens": ["a", "", "b"],
            "aws_access_key_id": null
        });
        let r = redacted(&v);
        assert_eq!(r["api_key"], REDACTED);
        assert_eq!(r["api_base"], "http://x");
        assert_eq!(r["empty_key"], "");
        assert_eq!(r["nested"]["client_secret"], REDACTED);
        assert_eq!(r["nested"]["max_tokens"], 5);
        assert_eq!(r["nested"]["deeper"][0]["token"], REDACTED);
        assert_eq!(r["tokens"], json!([REDACTED, "", REDACTED]));
        assert_eq!(r["aws_access_key_id"], Value::Null);
        assert!(!r.to_string().contains("sk-1"));
    }
}
