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
            .field("connection_config", &redaction::redacted(&Value::Object(self.connection_config.clone())))
            .finish()
    }
}

impl NamedCredential {
    /// This credential as the link a deployment write is checked against (CRED-4/5).
    pub fn as_link(&self) -> crate::deployment::LinkedCredential<'_> {
        crate::deployment::LinkedCredential { provider: &self.provider, connection_config: &self.connection_config }
    }

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
    const BEDROCK: &[&str] = &["api_base", "region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"];
    const BASIC: &[&str] = &["api_key", "api_base", "api_version"];
    const WITH_HEADERS: &[&str] = &["api_key", "api_base", "api_version", "auth_header_name", "auth_header_format"];
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
        return Err(Error::invalid(format!("Unsupported provider '{p}' for named credentials")));
    }
    Ok(p)
}

/// CRED-2/CRED-3: normalize and validate a connection config for `provider`
/// (strings trimmed, empty strings dropped, allowed keys only, header rules,
/// bedrock key pairing, at least one field).
pub fn validate_connection_config(provider_key: &str, config: &Map<String, Value>) -> Result<Map<String, Value>> {
    let allowed = allowed_fields(provider_key)
        .ok_or_else(|| Error::invalid(format!("Unsupported provider '{provider_key}' for named credentials")))?;
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
                return Err(Error::invalid(format!("connection_config.{k} must be a string")));
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
            return Err(Error::invalid("aws_access_key_id and aws_secret_access_key must be set together"));
        }
        if out.contains_key("aws_session_token") && !id {
            return Err(Error::invalid("aws_session_token requires aws_access_key_id and aws_secret_access_key"));
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("connection_config must include at least one field"));
    }
    Ok(out)
}

/// Ids taken by fixed admin routes under `/named-credentials/`.
const RESERVED_IDS: &[&str] = &["inline-report", "convert-inline-group"];

/// CRED-1: a client-supplied credential id is trimmed, non-empty, has no `/`
/// (it is one path segment) and is not a fixed route name.
pub fn validate_credential_id(raw: &str) -> Result<String> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(Error::invalid("credential_id must not be empty"));
    }
    if id.contains('/') || id.len() > 200 || RESERVED_IDS.contains(&id) {
        return Err(Error::invalid(format!(
            "credential_id '{id}' is not allowed; use at most 200 characters without '/'"
        )));
    }
    Ok(id.to_owned())
}

fn name_field(raw: Option<&Value>) -> Result<Option<String>> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(Error::invalid("name must be a string")),
    }
}

fn required_name(raw: Option<&Value>) -> Result<String> {
    match name_field(raw)? {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(Error::invalid("name is required")),
    }
}

fn metadata_field(raw: &Value) -> Result<Option<Value>> {
    match raw {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(raw.clone())),
        _ => Err(Error::invalid("metadata must be an object or null")),
    }
}

fn config_field(raw: Option<&Value>) -> Result<Option<Map<String, Value>>> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(Error::invalid("connection_config must be an object")),
    }
}

/// A validated create (CRED-1..3); the caller assigns the id if absent and
/// the timestamps.
#[derive(Clone, PartialEq)]
pub struct CredentialInput {
    /// Client-supplied id.
    pub credential_id: Option<String>,
    /// Trimmed name.
    pub name: String,
    /// Canonical provider.
    pub provider: String,
    /// Normalized connection config.
    pub connection_config: Map<String, Value>,
    /// Metadata object.
    pub metadata: Option<Value>,
}

impl fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialInput")
            .field("credential_id", &self.credential_id)
            .field("name", &self.name)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl CredentialInput {
    /// Read and validate a create body.
    pub fn from_json(body: &Value) -> Result<Self> {
        let Value::Object(obj) = body else {
            return Err(Error::invalid("request body must be a JSON object"));
        };
        let credential_id = match obj.get("credential_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(validate_credential_id(s)?),
            Some(_) => return Err(Error::invalid("credential_id must be a string")),
        };
        let name = required_name(obj.get("name"))?;
        let provider = match obj.get("provider") {
            None | Some(Value::Null) => return Err(Error::invalid("provider is required")),
            Some(Value::String(p)) => validate_provider(p)?,
            Some(_) => return Err(Error::invalid("provider must be a string")),
        };
        let config = config_field(obj.get("connection_config"))?
            .ok_or_else(|| Error::invalid("connection_config is required"))?;
        let connection_config = validate_connection_config(&provider, &config)?;
        let metadata = metadata_field(obj.get("metadata").unwrap_or(&Value::Null))?;
        Ok(Self { credential_id, name, provider, connection_config, metadata })
    }
}

/// An update body (CRED-3): omitted fields are kept.
#[derive(Clone, Default)]
pub struct CredentialPatch {
    name: Option<String>,
    provider: Option<String>,
    connection_config: Option<Map<String, Value>>,
    metadata: Option<Option<Value>>,
}

impl fmt::Debug for CredentialPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialPatch")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl CredentialPatch {
    /// Read an update body (shape checks only; rules run in [`Self::apply`]).
    pub fn from_json(body: &Value) -> Result<Self> {
        let Value::Object(obj) = body else {
            return Err(Error::invalid("request body must be a JSON object"));
        };
        let name = match obj.get("name") {
            None => None,
            some => Some(required_name(some)?),
        };
        let provider = match obj.get("provider") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(_) => return Err(Error::invalid("provider must be a string")),
        };
        Ok(Self {
            name,
            provider,
            connection_config: config_field(obj.get("connection_config"))?,
            metadata: obj.get("metadata").map(metadata_field).transpose()?,
        })
    }

    /// CRED-3: apply onto the stored credential. The provider is immutable;
    /// sent config keys replace, `null` deletes, empty strings are ignored
    /// (a blank secret field in a form means "unchanged"); the merged config
    /// is validated as a whole.
    pub fn apply(self, stored: &NamedCredential) -> Result<NamedCredential> {
        if let Some(p) = &self.provider
            && provider::canonical(p) != stored.provider
        {
            return Err(Error::invalid("Named credential provider cannot be changed"));
        }
        let mut out = stored.clone();
        if let Some(name) = self.name {
            out.name = name;
        }
        if let Some(sent) = self.connection_config {
            let sent: Map<String, Value> =
                sent.into_iter().filter(|(_, v)| !v.as_str().is_some_and(|s| s.trim().is_empty())).collect();
            let merged = merge_connection_config(&stored.connection_config, &sent);
            out.connection_config = validate_connection_config(&stored.provider, &merged)?;
        }
        if let Some(metadata) = self.metadata {
            out.metadata = metadata;
        }
        Ok(out)
    }
}

/// Names of the fields that differ between two versions (audit, ADM-9);
/// config keys are reported as `connection_config.<key>`, never their values.
pub fn changed_fields(before: Option<&NamedCredential>, after: &NamedCredential) -> Vec<String> {
    let mut out = Vec::new();
    let empty = Map::new();
    let old_config = before.map_or(&empty, |b| &b.connection_config);
    if before.is_none_or(|b| b.name != after.name) {
        out.push("name".to_owned());
    }
    if before.is_none_or(|b| b.provider != after.provider) {
        out.push("provider".to_owned());
    }
    crate::params::changed_keys("connection_config", old_config, &after.connection_config, &mut out);
    if before.is_none_or(|b| b.metadata != after.metadata) {
        out.push("metadata".to_owned());
    }
    out
}

/// CRED-4: does a deployment's provider match a credential's
/// (`azure` ≡ `azure_openai`)?
pub fn provider_matches(deployment_provider: &str, credential_provider: &str) -> bool {
    provider::canonical(deployment_provider) == provider::canonical(credential_provider)
}

/// CRED-3 update merge: omitted keys kept, `null` deletes, values replace.
pub fn merge_connection_config(stored: &Map<String, Value>, sent: &Map<String, Value>) -> Map<String, Value> {
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
pub fn inline_fingerprint(provider_key: &str, params: &Map<String, Value>) -> Option<(String, Map<String, Value>)> {
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
    doc.insert("provider".into(), Value::String(provider::canonical(provider_key)));
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
        assert!(validate_connection_config("bedrock", &cfg(json!({"aws_access_key_id": "a"}))).is_err());
        assert!(validate_connection_config("bedrock", &cfg(json!({"region": "r", "aws_session_token": "t"}))).is_err());
        assert!(
            validate_connection_config(
                "bedrock",
                &cfg(json!({"region": "r", "aws_access_key_id": "a", "aws_secret_access_key": "s"}))
            )
            .is_ok()
        );
        assert!(validate_connection_config("openai", &cfg(json!({"api_key": "  "}))).is_err());
        assert!(
            validate_connection_config("openai", &cfg(json!({"auth_header_name": "Content-Type", "api_key": "k"})))
                .is_err()
        );
        assert_eq!(validate_provider("Azure").unwrap(), "azure_openai");
        assert!(validate_provider("nope").is_err());
    }

    #[test]
    fn create_bodies_table() {
        let ok = json!({"name": " prod ", "provider": "Azure", "connection_config": {"api_key": " k ", "api_base": "https://r.openai.azure.com/openai/v1", "api_version": ""}});
        let c = CredentialInput::from_json(&ok).unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.provider, "azure_openai");
        assert_eq!(c.connection_config["api_key"], "k");
        assert!(!c.connection_config.contains_key("api_version"));
        assert_eq!(c.credential_id, None);

        let cases: &[(&str, Value, &str)] = &[
            ("not an object", json!([]), "request body must be a JSON object"),
            ("no name", json!({"provider": "openai", "connection_config": {"api_key": "k"}}), "name is required"),
            (
                "blank name",
                json!({"name": "  ", "provider": "openai", "connection_config": {"api_key": "k"}}),
                "name is required",
            ),
            ("no provider", json!({"name": "n", "connection_config": {"api_key": "k"}}), "provider is required"),
            (
                "unknown provider",
                json!({"name": "n", "provider": "acme", "connection_config": {"api_key": "k"}}),
                "Unsupported provider 'acme' for named credentials",
            ),
            ("no config", json!({"name": "n", "provider": "openai"}), "connection_config is required"),
            (
                "config not object",
                json!({"name": "n", "provider": "openai", "connection_config": "k"}),
                "connection_config must be an object",
            ),
            (
                "empty config",
                json!({"name": "n", "provider": "openai", "connection_config": {"api_key": ""}}),
                "connection_config must include at least one field",
            ),
            (
                "CRED-2 field",
                json!({"name": "n", "provider": "gemini", "connection_config": {"api_key": "k", "auth_header_name": "X"}}),
                "connection_config includes unsupported fields for provider 'gemini': auth_header_name",
            ),
            (
                "VAL-6 header",
                json!({"name": "n", "provider": "openai", "connection_config": {"api_key": "k", "auth_header_name": "Bad Header"}}),
                "auth_header_name 'Bad Header' is not a valid HTTP header name",
            ),
            (
                "VAL-7 format",
                json!({"name": "n", "provider": "openai", "connection_config": {"api_key": "k", "auth_header_format": "Token {{api_key}}"}}),
                "auth_header_format must include the {api_key} placeholder",
            ),
            (
                "VAL-7 other placeholder",
                json!({"name": "n", "provider": "groq", "connection_config": {"api_key": "k", "auth_header_format": "Bearer {token}"}}),
                "auth_header_format may only use the {api_key} placeholder, found '{token}'",
            ),
            (
                "non-string value",
                json!({"name": "n", "provider": "openai", "connection_config": {"api_key": 5}}),
                "connection_config.api_key must be a string",
            ),
            (
                "metadata type",
                json!({"name": "n", "provider": "openai", "connection_config": {"api_key": "k"}, "metadata": [1]}),
                "metadata must be an object or null",
            ),
            (
                "id with slash",
                json!({"credential_id": "a/b", "name": "n", "provider": "openai", "connection_config": {"api_key": "k"}}),
                "credential_id 'a/b' is not allowed; use at most 200 characters without '/'",
            ),
            (
                "reserved id",
                json!({"credential_id": "inline-report", "name": "n", "provider": "openai", "connection_config": {"api_key": "k"}}),
                "credential_id 'inline-report' is not allowed; use at most 200 characters without '/'",
            ),
        ];
        for (label, body, want) in cases {
            let err = CredentialInput::from_json(body).unwrap_err();
            assert_eq!(err.to_string(), *want, "{label}");
        }
    }

    fn stored() -> NamedCredential {
        NamedCredential {
            credential_id: "c1".into(),
            name: "prod".into(),
            provider: "openai".into(),
            connection_config: cfg(json!({"api_key": "old", "api_base": "http://a"})),
            metadata: Some(json!({"team": "ml"})),
            created_by_account_id: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn update_merge_table() {
        let cases: &[(&str, Value, Value, Value)] = &[
            (
                "omitted config kept",
                json!({"name": "x"}),
                json!({"api_key": "old", "api_base": "http://a"}),
                json!({"team": "ml"}),
            ),
            (
                "omitted secret kept (EDGE-11)",
                json!({"connection_config": {"api_base": "http://b"}}),
                json!({"api_key": "old", "api_base": "http://b"}),
                json!({"team": "ml"}),
            ),
            (
                "blank secret is unchanged",
                json!({"connection_config": {"api_key": "  "}}),
                json!({"api_key": "old", "api_base": "http://a"}),
                json!({"team": "ml"}),
            ),
            (
                "value replaces",
                json!({"connection_config": {"api_key": " new "}}),
                json!({"api_key": "new", "api_base": "http://a"}),
                json!({"team": "ml"}),
            ),
            (
                "null clears (EDGE-11)",
                json!({"connection_config": {"api_key": null}}),
                json!({"api_base": "http://a"}),
                json!({"team": "ml"}),
            ),
            (
                "metadata replaced",
                json!({"metadata": {"x": 1}}),
                json!({"api_key": "old", "api_base": "http://a"}),
                json!({"x": 1}),
            ),
            (
                "metadata null clears",
                json!({"metadata": null}),
                json!({"api_key": "old", "api_base": "http://a"}),
                Value::Null,
            ),
            (
                "same provider in another spelling",
                json!({"provider": " OpenAI "}),
                json!({"api_key": "old", "api_base": "http://a"}),
                json!({"team": "ml"}),
            ),
        ];
        for (label, body, config, metadata) in cases {
            let out =
                CredentialPatch::from_json(body).unwrap().apply(&stored()).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(Value::Object(out.connection_config), *config, "{label}");
            assert_eq!(out.metadata.unwrap_or(Value::Null), *metadata, "{label}");
        }
        let errors: &[(&str, Value, &str)] = &[
            ("provider change", json!({"provider": "groq"}), "Named credential provider cannot be changed"),
            ("blank name", json!({"name": ""}), "name is required"),
            (
                "all fields removed",
                json!({"connection_config": {"api_key": null, "api_base": null}}),
                "connection_config must include at least one field",
            ),
            (
                "unsupported field",
                json!({"connection_config": {"region": "r"}}),
                "connection_config includes unsupported fields for provider 'openai': region",
            ),
        ];
        for (label, body, want) in errors {
            let err = CredentialPatch::from_json(body).and_then(|p| p.apply(&stored())).unwrap_err();
            assert_eq!(err.to_string(), *want, "{label}");
        }
    }

    #[test]
    fn changed_fields_name_keys_not_values() {
        let before = stored();
        let mut after = before.clone();
        after.connection_config.insert("api_key".into(), json!("new-secret"));
        after.metadata = None;
        let fields = changed_fields(Some(&before), &after);
        assert_eq!(fields, vec!["connection_config.api_key", "metadata"]);
        assert!(!format!("{fields:?}").contains("new-secret"));
        assert!(changed_fields(None, &after).contains(&"name".to_owned()));
    }

    #[test]
    fn cred_4_provider_matching() {
        for (dep, cred, want) in [
            ("azure", "azure_openai", true),
            ("azure_openai", "azure_openai", true),
            ("OpenAI", "openai", true),
            ("openai", "groq", false),
            ("azure", "openai", false),
        ] {
            assert_eq!(provider_matches(dep, cred), want, "{dep} vs {cred}");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_ignores_other_fields() {
        let a = cfg(json!({"api_key": "k", "api_base": "http://x", "model": "m1", "provider": "vllm"}));
        let b = cfg(json!({"api_base": "http://x", "api_key": "k", "model": "m2"}));
        assert_eq!(inline_fingerprint("vllm", &a).unwrap().0, inline_fingerprint("vllm", &b).unwrap().0);
        assert_ne!(inline_fingerprint("vllm", &a).unwrap().0, inline_fingerprint("openai", &a).unwrap().0);
        assert!(inline_fingerprint("vllm", &cfg(json!({"model": "m"}))).is_none());
    }
}
