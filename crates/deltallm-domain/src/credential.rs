//! Named credentials (CRED-1..4, CRED-8, CRED-11).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::params::CONNECTION_FIELDS;
use crate::{Error, Result, auth_header, provider, redaction};

/// A shared provider connection.
#[derive(Clone, PartialEq, Serialize)]
pub struct NamedCredential {
    /// Primary key (client-supplied or UUIDv4).
    pub credential_id: String,
    /// Unique, trimmed display name.
    pub name: String,
    /// Canonical provider (`azure` folded into `azure_openai`); immutable.
    pub provider: String,
    /// Connection fields; secrets in clear while in memory.
    pub connection_config: Map<String, Value>,
    /// Free-form metadata.
    pub metadata: Option<Value>,
    /// Who created it.
    pub created_by_account_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write time.
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for NamedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedCredential")
            .field("credential_id", &self.credential_id)
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field(
                "connection_config",
                &redaction::redacted(&Value::Object(self.connection_config.clone())),
            )
            .finish()
    }
}

impl NamedCredential {
    /// CRED-8: some config value is non-empty.
    pub fn credentials_present(&self) -> bool {
        self.connection_config.values().any(|v| match v {
            Value::Null => false,
            Value::String(s) => !s.trim().is_empty(),
            _ => true,
        })
    }
}

/// CRED-2: the connection keys a provider's credential may hold.
pub fn allowed_fields(provider_key: &str) -> Option<&'static [&'static str]> {
    const BEDROCK: &[&str] = &[
        "api_base",
        "region",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
    ];
    const BASIC: &[&str] = &["api_key", "api_base", "api_version"];
    const WITH_HEADERS: &[&str] = &[
        "api_key",
        "api_base",
        "api_version",
        "auth_header_name",
        "auth_header_format",
    ];
    match provider_key {
        "bedrock" => Some(BEDROCK),
        "azure_openai" | "anthropic" | "gemini" => Some(BASIC),
        p if provider::allows_custom_auth(p) => Some(WITH_HEADERS),
        _ => None,
    }
}

/// CRED-1: canonical provider of a credential; must be a VAL-1 key.
pub fn validate_provider(raw: &str) -> Result<String> {
    let p = provider::canonical(raw);
    if p.is_empty() {
        return Err(Error::invalid("provider is required"));
    }
    if provider::lookup(&p).is_none() {
        return Err(Error::invalid(format!(
            "Unsupported provider '{p}' for named credentials"
        )));
    }
    Ok(p)
}

/// CRED-2/CRED-3: normalize and validate a connection config for `provider`
/// (strings trimmed, empty strings dropped, allowed keys only, header rules,
/// bedrock key pairing, at least one field).
pub fn validate_connection_config(
    provider_key: &str,
    config: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let allowed = allowed_fields(provider_key).ok_or_else(|| {
        Error::invalid(format!(
            "Unsupported provider '{provider_key}' for named credentials"
        ))
    })?;
    let mut out = Map::new();
    let mut unsupported: Vec<&str> = Vec::new();
    for (k, v) in config {
        if !allowed.contains(&k.as_str()) {
            unsupported.push(k);
            continue;
        }
        match v {
            Value::Null => {}
            Value::String(s) => {
                let t = s.trim();
                if !t.is_empty() {
                    out.insert(k.clone(), Value::String(t.to_owned()));
                }
            }
            _ => {
                return Err(Error::invalid(format!(
                    "connection_config.{k} must be a string"
                )));
            }
        }
    }
    if !unsupported.is_empty() {
        unsupported.sort_unstable();
        return Err(Error::invalid(format!(
            "connection_config includes unsupported fields for provider '{provider_key}': {}",
            unsupported.join(", ")
        )));
    }
    if let Some(Value::String(n)) = out.get("auth_header_name") {
        let n = auth_header::validate_name(n)?;
        out.insert("auth_header_name".into(), Value::String(n));
    }
    if let Some(Value::String(f)) = out.get("auth_header_format") {
        let f = auth_header::validate_format(f)?;
        out.insert("auth_header_format".into(), Value::String(f));
    }
    if provider_key == "bedrock" {
        let id = out.contains_key("aws_access_key_id");
        let secret = out.contains_key("aws_secret_access_key");
        if id != secret {
            return Err(Error::invalid(
                "aws_access_key_id and aws_secret_access_key must be set together",
            ));
        }
        if out.contains_key("aws_session_token") && !id {
            return Err(Error::invalid(
                "aws_session_token requires aws_access_key_id and aws_secret_access_key",
            ));
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "connection_config must include at least one field",
        ));
    }
    Ok(out)
}

/// CRED-3 update merge: omitted keys kept, `null` deletes, values replace.
pub fn merge_connection_config(
    stored: &Map<String, Value>,
    sent: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = stored.clone();
    for (k, v) in sent {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// CRED-11 fingerprint of a deployment's non-empty inline connection fields:
/// SHA-256 of compact sorted-key JSON `{provider, connection_config}`.
/// `None` when the deployment has no inline connection field.
pub fn inline_fingerprint(
    provider_key: &str,
    params: &Map<String, Value>,
) -> Option<(String, Map<String, Value>)> {
    let mut config = Map::new();
    for field in CONNECTION_FIELDS {
        if let Some(Value::String(s)) = params.get(field)
            && !s.trim().is_empty()
        {
            config.insert(field.to_owned(), Value::String(s.trim().to_owned()));
        }
    }
    if config.is_empty() {
        return None;
    }
    // serde_json's Map is a BTreeMap here (no preserve_order), so keys are sorted.
    let mut doc = Map::new();
    doc.insert("connection_config".into(), Value::Object(config.clone()));
    doc.insert(
        "provider".into(),
        Value::String(provider::canonical(provider_key)),
    );
    let digest = Sha256::digest(Value::Object(doc).to_string().as_bytes());
    Some((hex::encode(digest), config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn cred_2_allowed_fields() {
        let ok = validate_connection_config("vllm", &cfg(json!({"api_key": " k ", "api_base": "http://x", "auth_header_name": "X-API-Key", "auth_header_format": "{api_key}"}))).unwrap();
        assert_eq!(ok["api_key"], "k");
        let err = validate_connection_config(
            "anthropic",
            &cfg(json!({"api_key": "k", "region": "r", "auth_header_name": "X"})),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection_config includes unsupported fields for provider 'anthropic': auth_header_name, region"
        );
        assert!(
            validate_connection_config("bedrock", &cfg(json!({"aws_access_key_id": "a"}))).is_err()
        );
        assert!(
            validate_connection_config(
                "bedrock",
                &cfg(json!({"region": "r", "aws_session_token": "t"}))
            )
            .is_err()
        );
        assert!(
            validate_connection_config(
                "bedrock",
                &cfg(
                    json!({"region": "r", "aws_access_key_id": "a", "aws_secret_access_key": "s"})
                )
            )
            .is_ok()
        );
        assert!(validate_connection_config("openai", &cfg(json!({"api_key": "  "}))).is_err());
        assert!(
            validate_connection_config(
                "openai",
                &cfg(json!({"auth_header_name": "Content-Type", "api_key": "k"}))
            )
            .is_err()
        );
        assert_eq!(validate_provider("Azure").unwrap(), "azure_openai");
        assert!(validate_provider("nope").is_err());
    }

    #[test]
    fn fingerprint_is_stable_and_ignores_other_fields() {
        let a =
            cfg(json!({"api_key": "k", "api_base": "http://x", "model": "m1", "provider": "vllm"}));
        let b = cfg(json!({"api_base": "http://x", "api_key": "k", "model": "m2"}));
        assert_eq!(
            inline_fingerprint("vllm", &a).unwrap().0,
            inline_fingerprint("vllm", &b).unwrap().0
        );
        assert_ne!(
            inline_fingerprint("vllm", &a).unwrap().0,
            inline_fingerprint("openai", &a).unwrap().0
        );
        assert!(inline_fingerprint("vllm", &cfg(json!({"model": "m"}))).is_none());
    }
}
