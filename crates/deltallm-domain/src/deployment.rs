//! Model deployments: the record (DEP-1), write normalization and validation
//! (ADM-4, VAL-1..10), update merge semantics (ADM-4, EDGE-1), the
//! credential-wins overlay (CRED-5) and values derived at registry build (DEP-7).

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::params::{CONNECTION_FIELDS, int_field, str_field, string_field};
use crate::{Error, Result, auth_header, chat_batching, model_info, provider, redaction};

/// Workload mode of a deployment (`model_info.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Chat completions (default).
    #[default]
    Chat,
    /// Embeddings.
    Embedding,
    /// Image generation.
    ImageGeneration,
    /// Text to speech.
    AudioSpeech,
    /// Speech to text.
    AudioTranscription,
    /// Rerank.
    Rerank,
}

impl Mode {
    /// All modes, in display order.
    pub const ALL: [Mode; 6] =
        [Mode::Chat, Mode::Embedding, Mode::ImageGeneration, Mode::AudioSpeech, Mode::AudioTranscription, Mode::Rerank];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Embedding => "embedding",
            Mode::ImageGeneration => "image_generation",
            Mode::AudioSpeech => "audio_speech",
            Mode::AudioTranscription => "audio_transcription",
            Mode::Rerank => "rerank",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::invalid(format!(
                "model_info.mode '{s}' is not supported; use one of chat, embedding, image_generation, audio_speech, audio_transcription, rerank"
            )))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored deployment (DEP-1). `deltallm_params` holds secrets in clear while
/// in memory, so `Debug` prints a redacted copy.
#[derive(Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// Primary key, may contain `/`.
    pub deployment_id: String,
    /// Public name clients call.
    pub model_name: String,
    /// Linked named credential.
    pub named_credential_id: Option<String>,
    /// Provider parameters (unknown keys kept).
    pub deltallm_params: Map<String, Value>,
    /// Model metadata: mode, pricing, limits, access groups...
    pub model_info: Map<String, Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write time.
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("deployment_id", &self.deployment_id)
            .field("model_name", &self.model_name)
            .field("named_credential_id", &self.named_credential_id)
            .field("deltallm_params", &redaction::redacted(&Value::Object(self.deltallm_params.clone())))
            .field("model_info", &self.model_info)
            .finish()
    }
}

impl Deployment {
    /// RUN-3 provider of this deployment.
    pub fn provider(&self) -> String {
        provider::infer(
            self.deltallm_params.get("provider").and_then(Value::as_str),
            str_field(&self.deltallm_params, "model").unwrap_or(""),
        )
    }

    /// Workload mode (default chat).
    pub fn mode(&self) -> Mode {
        model_info::mode_of(&self.model_info).unwrap_or_default()
    }

    /// DEP-7 weight: `model_info.weight` ?? `deltallm_params.weight` ?? 1; 0 → 1.
    pub fn weight(&self) -> u32 {
        let w = self
            .model_info
            .get("weight")
            .and_then(Value::as_u64)
            .or_else(|| self.deltallm_params.get("weight").and_then(Value::as_u64))
            .unwrap_or(1);
        u32::try_from(w).unwrap_or(u32::MAX).max(1)
    }

    /// DEP-7 priority (lower preferred), default 0.
    pub fn priority(&self) -> u32 {
        self.model_info.get("priority").and_then(Value::as_u64).map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX))
    }

    /// DEP-7 rpm limit: `model_info.rpm_limit` ?? `deltallm_params.rpm`.
    pub fn rpm_limit(&self) -> Option<u64> {
        self.model_info
            .get("rpm_limit")
            .and_then(Value::as_u64)
            .or_else(|| self.deltallm_params.get("rpm").and_then(Value::as_u64))
    }

    /// DEP-7 tpm limit: `model_info.tpm_limit` ?? `deltallm_params.tpm`.
    pub fn tpm_limit(&self) -> Option<u64> {
        self.model_info
            .get("tpm_limit")
            .and_then(Value::as_u64)
            .or_else(|| self.deltallm_params.get("tpm").and_then(Value::as_u64))
    }

    /// Routing tags (`model_info.tags`).
    pub fn tags(&self) -> Vec<String> {
        match self.model_info.get("tags") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// Access groups (`model_info.access_groups`, normalized on write).
    pub fn access_groups(&self) -> Vec<String> {
        model_info::access_groups_of(&self.model_info)
    }

    /// Are inline secret credentials stored (`api_key` or `aws_*` non-empty)?
    pub fn inline_credentials_present(&self) -> bool {
        self.named_credential_id.is_none()
            && self.deltallm_params.iter().any(|(k, v)| {
                (k == "api_key" || k.starts_with("aws_")) && v.as_str().is_some_and(|s| !s.trim().is_empty())
            })
    }
}

/// CRED-5: effective params = deployment params overlaid by every credential
/// key (the credential wins; empty credential values are ignored).
pub fn effective_params(params: &Map<String, Value>, credential: Option<&Map<String, Value>>) -> Map<String, Value> {
    let mut out = params.clone();
    if let Some(config) = credential {
        for (k, v) in config {
            if !(v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Remove the nine inline connection fields (linked deployments, CRED-5).
pub fn strip_connection_fields(params: &mut Map<String, Value>) {
    for field in CONNECTION_FIELDS {
        params.remove(field);
    }
}

/// A generated id: `<model_name>-<8 random lowercase hex>` (DEP-2).
pub fn generate_id(model_name: &str) -> String {
    let n: u32 = rand::rng().random();
    format!("{model_name}-{n:08x}")
}

/// A create (or the merged result of an update) as sent by a client or config.
#[derive(Clone, PartialEq, Default)]
pub struct DeploymentInput {
    /// Requested id (DEP-2); `None` → generated.
    pub deployment_id: Option<String>,
    /// Public name.
    pub model_name: String,
    /// Linked credential.
    pub named_credential_id: Option<String>,
    /// Provider parameters.
    pub deltallm_params: Map<String, Value>,
    /// Model metadata.
    pub model_info: Map<String, Value>,
}

impl fmt::Debug for DeploymentInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentInput")
            .field("deployment_id", &self.deployment_id)
            .field("model_name", &self.model_name)
            .field("named_credential_id", &self.named_credential_id)
            .field("deltallm_params", &redaction::redacted(&Value::Object(self.deltallm_params.clone())))
            .field("model_info", &self.model_info)
            .finish()
    }
}

fn object_field(obj: &Map<String, Value>, keys: &[&str]) -> Result<Option<Map<String, Value>>> {
    for key in keys {
        match obj.get(*key) {
            None => continue,
            Some(Value::Null) => return Ok(None),
            Some(Value::Object(m)) => return Ok(Some(m.clone())),
            Some(_) => return Err(Error::invalid(format!("{} must be an object", keys[0]))),
        }
    }
    Ok(None)
}

fn optional_id(obj: &Map<String, Value>, key: &str) -> Result<Option<Option<String>>> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.trim().to_owned()))),
        Some(_) => Err(Error::invalid(format!("{key} must be a string"))),
    }
}

/// The keys of a deployment entry (CFG-1; the admin create body has the same).
pub const ENTRY_KEYS: [&str; 6] =
    ["model_name", "deployment_id", "named_credential_id", "deltallm_params", "litellm_params", "model_info"];

/// Top-level keys of an entry that are not in [`ENTRY_KEYS`], in document
/// order: read as nothing, so a config names them rather than dropping a
/// misspelt `model_info` silently.
pub fn unknown_entry_keys(value: &Value) -> Vec<&str> {
    match value {
        Value::Object(obj) => obj.keys().map(String::as_str).filter(|k| !ENTRY_KEYS.contains(k)).collect(),
        _ => Vec::new(),
    }
}

impl DeploymentInput {
    /// Read a create body (or a config `model_list` entry). Accepts the
    /// `litellm_params` alias. Shape errors are 400s naming the field.
    pub fn from_json(value: &Value) -> Result<Self> {
        let Value::Object(obj) = value else {
            return Err(Error::invalid("request body must be a JSON object"));
        };
        let model_name = match obj.get("model_name") {
            Some(Value::String(s)) => s.trim().to_owned(),
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err(Error::invalid("model_name must be a string")),
        };
        Ok(Self {
            deployment_id: optional_id(obj, "deployment_id")?.flatten(),
            model_name,
            named_credential_id: optional_id(obj, "named_credential_id")?.flatten(),
            deltallm_params: object_field(obj, &["deltallm_params", "litellm_params"])?.unwrap_or_default(),
            model_info: object_field(obj, &["model_info"])?.unwrap_or_default(),
        })
    }
}

/// An update body (ADM-4): omitted fields are kept.
#[derive(Debug, Clone, Default)]
pub struct DeploymentPatch {
    /// New public name.
    pub model_name: Option<String>,
    /// `Some(None)` unlinks (null or "").
    pub named_credential_id: Option<Option<String>>,
    /// Shallow-merged into the stored params; `null` values delete keys.
    pub deltallm_params: Option<Map<String, Value>>,
    /// Replaces the stored `model_info` wholesale.
    pub model_info: Option<Map<String, Value>>,
}

impl DeploymentPatch {
    /// Read an update body.
    pub fn from_json(value: &Value) -> Result<Self> {
        let Value::Object(obj) = value else {
            return Err(Error::invalid("request body must be a JSON object"));
        };
        let model_name = match obj.get("model_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(_) => return Err(Error::invalid("model_name must be a string")),
        };
        let model_info = match obj.get("model_info") {
            None => None,
            Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err(Error::invalid("model_info must be an object")),
        };
        Ok(Self {
            model_name,
            named_credential_id: optional_id(obj, "named_credential_id")?,
            deltallm_params: object_field(obj, &["deltallm_params", "litellm_params"])?,
            model_info,
        })
    }

    /// Merge onto the stored record (ADM-4, EDGE-1): stored connection fields
    /// are dropped when the provider changes or a credential is linked, so an
    /// omitted `api_key` otherwise survives.
    pub fn apply(self, stored: &Deployment) -> DeploymentInput {
        let named_credential_id = match self.named_credential_id {
            None => stored.named_credential_id.clone(),
            Some(v) => v,
        };
        let mut params = stored.deltallm_params.clone();
        if let Some(sent) = self.deltallm_params {
            let old = provider::canonical(&stored.provider());
            let new_provider = match sent.get("provider") {
                Some(Value::String(p)) => provider::canonical(p),
                _ => old.clone(),
            };
            if new_provider != old || named_credential_id.is_some() {
                strip_connection_fields(&mut params);
            }
            for (k, v) in sent {
                if v.is_null() {
                    params.remove(&k);
                } else {
                    params.insert(k, v);
                }
            }
        }
        DeploymentInput {
            deployment_id: Some(stored.deployment_id.clone()),
            model_name: self.model_name.unwrap_or_else(|| stored.model_name.clone()),
            named_credential_id,
            deltallm_params: params,
            model_info: self.model_info.unwrap_or_else(|| stored.model_info.clone()),
        }
    }
}

/// The linked credential a write is checked against.
#[derive(Debug, Clone, Copy)]
pub struct LinkedCredential<'a> {
    /// Canonical provider of the credential.
    pub provider: &'a str,
    /// Its connection config (secrets in clear, never logged).
    pub connection_config: &'a Map<String, Value>,
}

/// Which checks a write path applies.
#[derive(Debug, Clone, Copy)]
pub struct WriteRules {
    /// Admin writes need an explicit `provider` (config may infer it, RUN-3).
    pub require_provider: bool,
    /// Admin writes need an effective `api_base` (config may rely on DEP-9).
    pub require_api_base: bool,
}

impl WriteRules {
    /// Rules for the admin API (VAL-3).
    pub const ADMIN: WriteRules = WriteRules { require_provider: true, require_api_base: true };
    /// Rules for config bootstrap (CFG-4): provider may be inferred, api_base may be filled at runtime.
    pub const CONFIG: WriteRules = WriteRules { require_provider: false, require_api_base: false };
}

/// A write that passed every rule, normalized and ready to store.
#[derive(Debug, Clone)]
pub struct ValidDeployment {
    /// The normalized input (id still optional).
    pub input: DeploymentInput,
    /// RUN-3 provider.
    pub provider: String,
    /// Workload mode.
    pub mode: Mode,
}

fn trim_string(params: &mut Map<String, Value>, key: &str, blank_is_null: bool) -> Result<()> {
    match params.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let t = s.trim().to_owned();
            if t.is_empty() && blank_is_null {
                params.remove(key);
            } else {
                params.insert(key.into(), Value::String(t));
            }
        }
        Some(_) => {
            return Err(Error::invalid(format!("deltallm_params.{key} must be a string")));
        }
    }
    Ok(())
}

/// Normalize and validate a deployment write. `credential` is the linked
/// credential when `named_credential_id` is set (the caller looks it up;
/// `None` with an id set means it does not exist).
pub fn validate(
    mut input: DeploymentInput,
    credential: Option<LinkedCredential<'_>>,
    rules: WriteRules,
) -> Result<ValidDeployment> {
    if input.model_name.is_empty() {
        return Err(Error::invalid("model_name is required"));
    }
    if let Some(id) = &input.deployment_id
        && id.trim().is_empty()
    {
        input.deployment_id = None;
    }
    let params = &mut input.deltallm_params;

    // Provider: lower-cased; required on the admin path.
    match params.get("provider") {
        None | Some(Value::Null) => {
            if rules.require_provider {
                return Err(Error::invalid("provider is required"));
            }
            params.remove("provider");
        }
        Some(Value::String(p)) if p.trim().is_empty() => {
            if rules.require_provider {
                return Err(Error::invalid("provider is required"));
            }
            params.remove("provider");
        }
        Some(Value::String(p)) => {
            let p = p.trim().to_ascii_lowercase();
            params.insert("provider".into(), Value::String(p));
        }
        Some(_) => return Err(Error::invalid("deltallm_params.provider must be a string")),
    }
    trim_string(params, "model", false)?;
    if str_field(params, "model").is_none() {
        return Err(Error::invalid("deltallm_params.model is required"));
    }
    let provider =
        provider::infer(params.get("provider").and_then(Value::as_str), str_field(params, "model").unwrap_or(""));

    for key in ["api_base", "region", "api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"] {
        trim_string(params, key, false)?;
    }
    trim_string(params, "api_version", true)?;

    // Named credential link (CRED-4, CRED-5).
    if input.named_credential_id.is_some() {
        let Some(cred) = credential else {
            return Err(Error::invalid("named_credential_id is invalid"));
        };
        if provider::canonical(cred.provider) != provider::canonical(&provider) {
            return Err(Error::invalid("Named credential provider does not match deployment provider"));
        }
        strip_connection_fields(params);
    }
    let effective = effective_params(
        params,
        credential.filter(|_| input.named_credential_id.is_some()).map(|c| c.connection_config),
    );
    if rules.require_api_base && str_field(&effective, "api_base").is_none() {
        return Err(Error::invalid("deltallm_params.api_base is required"));
    }

    // Custom auth headers (VAL-5..7), checked on the effective connection.
    let name = string_field(&effective, "auth_header_name", "deltallm_params.auth_header_name")?;
    let format = string_field(&effective, "auth_header_format", "deltallm_params.auth_header_format")?;
    if name.is_some() || format.is_some() {
        if !provider::allows_custom_auth(&provider) {
            return Err(Error::invalid(format!("Custom auth headers are not supported for provider '{provider}'")));
        }
        if let Some(n) = name {
            let n = auth_header::validate_name(n)?;
            if params.contains_key("auth_header_name") {
                params.insert("auth_header_name".into(), Value::String(n));
            }
        }
        if let Some(f) = format {
            let f = auth_header::validate_format(f)?;
            if params.contains_key("auth_header_format") {
                params.insert("auth_header_format".into(), Value::String(f));
            }
        }
    }

    // Typed checks (VAL-10).
    for (key, min) in [("timeout", 1), ("stream_timeout", 1), ("max_tokens", 1), ("rpm", 0), ("tpm", 0), ("weight", 0)]
    {
        int_field(params, key, &format!("deltallm_params.{key}"), min)?;
    }
    match chat_batching::parse(params.get("chat_batching"))? {
        None => {
            params.remove("chat_batching");
        }
        Some(cb) => {
            let v = serde_json::to_value(cb).map_err(|e| Error::invalid(e.to_string()))?;
            params.insert("chat_batching".into(), v);
        }
    }

    let mode = model_info::validate(&mut input.model_info)?;
    if !provider::supports_mode(&provider, mode) {
        return Err(Error::invalid(format!("Provider '{provider}' does not support mode '{mode}'")));
    }
    Ok(ValidDeployment { input, provider, mode })
}

/// DEP-3: a warning when deployments sharing `model_name` carry differing
/// access-group lists. `lists` holds (deployment_id, groups) for every
/// deployment of the name after the write.
pub fn access_group_warning(model_name: &str, lists: &[(String, Vec<String>)]) -> Option<String> {
    let first = &lists.first()?.1;
    if lists.iter().all(|(_, g)| g == first) {
        return None;
    }
    let detail: Vec<String> = lists.iter().map(|(id, g)| format!("{id}: [{}]", g.join(", "))).collect();
    Some(format!(
        "Deployments of model '{model_name}' have differing access_groups ({}); access-group expansion is disabled for this model until they agree",
        detail.join("; ")
    ))
}

/// Names of the fields that differ from the stored record (audit, ADM-9):
/// top-level fields, and `deltallm_params.<key>` per changed parameter.
pub fn changed_fields(before: Option<&Deployment>, after: &Deployment) -> Vec<String> {
    let mut out = Vec::new();
    if before.is_none_or(|b| b.model_name != after.model_name) {
        out.push("model_name".to_owned());
    }
    if before.is_none_or(|b| b.named_credential_id != after.named_credential_id) {
        out.push("named_credential_id".to_owned());
    }
    let empty = Map::new();
    let old_params = before.map_or(&empty, |b| &b.deltallm_params);
    crate::params::changed_keys("deltallm_params", old_params, &after.deltallm_params, &mut out);
    if before.is_none_or(|b| b.model_info != after.model_info) {
        out.push("model_info".to_owned());
    }
    out
}

/// DEP-3/RUN-4: the deployments of one public name form one model group, so
/// they must serve one workload mode (a chat request may go to any of them).
/// `others` holds (deployment_id, mode) of the name's other deployments.
pub fn check_shared_mode<'a>(
    model_name: &str,
    mode: Mode,
    others: impl IntoIterator<Item = (&'a str, Mode)>,
) -> Result<()> {
    for (id, other) in others {
        if other != mode {
            return Err(Error::invalid(format!(
                "Deployments of model '{model_name}' must share one mode: '{id}' is {other}, this one is {mode}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_fields_name_what_changed_and_never_values() {
        let stored = Deployment {
            deployment_id: "d".into(),
            model_name: "m".into(),
            named_credential_id: None,
            deltallm_params: json!({"provider": "vllm", "api_key": "sk-old"}).as_object().cloned().unwrap(),
            model_info: Map::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let mut next = stored.clone();
        next.deltallm_params.insert("api_key".into(), json!("sk-new"));
        next.deltallm_params.insert("timeout".into(), json!(30));
        assert_eq!(changed_fields(Some(&stored), &next), ["deltallm_params.api_key", "deltallm_params.timeout"]);
        let created = changed_fields(None, &stored);
        assert_eq!(
            created,
            ["model_name", "named_credential_id", "deltallm_params.api_key", "deltallm_params.provider", "model_info"]
        );
        assert!(!format!("{created:?}").contains("sk-old"));
    }

    #[test]
    fn deployments_of_one_name_share_one_mode() {
        assert!(check_shared_mode("m", Mode::Chat, []).is_ok());
        assert!(check_shared_mode("m", Mode::Chat, [("a", Mode::Chat), ("b", Mode::Chat)]).is_ok());
        let err = check_shared_mode("m", Mode::Chat, [("a", Mode::Chat), ("e", Mode::Embedding)]).unwrap_err();
        assert_eq!(err.to_string(), "Deployments of model 'm' must share one mode: 'e' is embedding, this one is chat");
    }

    fn input(v: Value) -> DeploymentInput {
        DeploymentInput::from_json(&v).expect("shape")
    }

    fn base() -> Value {
        json!({"model_name": "m", "deltallm_params": {"provider": "openai", "model": "gpt-4o", "api_base": "https://api.openai.com/v1", "api_key": "k"}})
    }

    fn with(edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = base();
        edit(&mut v);
        v
    }

    fn admin(v: Value) -> Result<ValidDeployment> {
        validate(input(v), None, WriteRules::ADMIN)
    }

    #[test]
    fn every_admin_rule_has_its_message() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("VAL-3", with(|v| v["model_name"] = json!("")), "model_name is required"),
            ("VAL-3", with(|v| v["deltallm_params"]["provider"] = json!(" ")), "provider is required"),
            ("VAL-3", with(|v| v["deltallm_params"]["model"] = json!("")), "deltallm_params.model is required"),
            ("VAL-3", with(|v| v["deltallm_params"]["api_base"] = Value::Null), "deltallm_params.api_base is required"),
            (
                "VAL-2",
                with(|v| v["model_info"] = json!({"mode": "rerank"})),
                "Provider 'openai' does not support mode 'rerank'",
            ),
            (
                "VAL-5",
                with(|v| {
                    v["deltallm_params"]["provider"] = json!("gemini");
                    v["deltallm_params"]["auth_header_name"] = json!("X-Key");
                }),
                "Custom auth headers are not supported for provider 'gemini'",
            ),
            (
                "VAL-5 unknown",
                with(|v| {
                    v["deltallm_params"]["provider"] = json!("acme");
                    v["deltallm_params"]["auth_header_format"] = json!("{api_key}");
                }),
                "Custom auth headers are not supported for provider 'acme'",
            ),
            ("VAL-6", with(|v| v["deltallm_params"]["auth_header_name"] = json!("Content-Type")), "Content-Type"),
            (
                "VAL-7",
                with(|v| v["deltallm_params"]["auth_header_format"] = json!("Token {{api_key}}")),
                "must include the {api_key} placeholder",
            ),
            (
                "VAL-8",
                with(|v| {
                    v["deltallm_params"]["chat_batching"] =
                        json!({"mode": "sync_microbatch", "upstream_max_batch_size": 1})
                }),
                "chat_batching.upstream_max_batch_size",
            ),
            ("VAL-9", with(|v| v["model_info"] = json!({"access_groups": ["UPPER ok", "x"]})), "Invalid access group"),
            ("VAL-10", with(|v| v["deltallm_params"]["timeout"] = json!(0)), "deltallm_params.timeout must be >= 1"),
            (
                "VAL-10",
                with(|v| v["deltallm_params"]["weight"] = json!("3")),
                "deltallm_params.weight must be an integer",
            ),
            (
                "VAL-10",
                with(|v| v["deltallm_params"]["api_base"] = json!(5)),
                "deltallm_params.api_base must be a string",
            ),
            ("CRED-4", with(|v| v["named_credential_id"] = json!("c1")), "named_credential_id is invalid"),
        ];
        for (rule, payload, message) in cases {
            let err = admin(payload).expect_err(rule).to_string();
            assert!(err.contains(message), "{rule}: expected '{message}' in '{err}'");
        }
    }

    #[test]
    fn config_rules_infer_provider_and_allow_missing_api_base() {
        let v = json!({"model_name": "m", "deltallm_params": {"model": "groq/llama-3"}});
        let ok = validate(input(v.clone()), None, WriteRules::CONFIG).expect("config");
        assert_eq!(ok.provider, "groq");
        assert_eq!(admin(v).unwrap_err().to_string(), "provider is required");
    }

    #[test]
    fn normalization_edge_2_and_trims() {
        let ok = admin(json!({
            "model_name": " m ",
            "deltallm_params": {"provider": " OpenAI ", "model": " gpt-4o ", "api_base": " https://x/v1 ", "api_version": " ", "api_key": "k"},
            "model_info": {"access_groups": ["Beta", "support", "beta"]}
        }))
        .unwrap();
        let p = &ok.input.deltallm_params;
        assert_eq!(ok.input.model_name, "m");
        assert_eq!(
            (p["provider"].as_str(), p["model"].as_str(), p["api_base"].as_str()),
            (Some("openai"), Some("gpt-4o"), Some("https://x/v1"))
        );
        assert!(!p.contains_key("api_version"), "blank api_version becomes null");
        assert_eq!(ok.input.model_info["access_groups"], json!(["beta", "support"]));
    }

    #[test]
    fn edge_5_azure_deployment_accepts_azure_openai_credential() {
        let config = json!({"api_key": "k", "api_base": "https://r.openai.azure.com/openai/v1"});
        let cred = LinkedCredential { provider: "azure_openai", connection_config: config.as_object().unwrap() };
        let v = json!({"model_name": "m", "named_credential_id": "c1", "deltallm_params": {"provider": "azure", "model": "dep", "api_key": "inline", "api_base": "https://inline"}});
        let ok = validate(input(v), Some(cred), WriteRules::ADMIN).expect("azure ≡ azure_openai");
        assert!(!ok.input.deltallm_params.contains_key("api_key"), "inline connection fields are stripped when linked");
        assert!(!ok.input.deltallm_params.contains_key("api_base"));
        let wrong = LinkedCredential { provider: "openai", connection_config: config.as_object().unwrap() };
        let v = json!({"model_name": "m", "named_credential_id": "c1", "deltallm_params": {"provider": "azure", "model": "dep"}});
        assert_eq!(
            validate(input(v), Some(wrong), WriteRules::ADMIN).unwrap_err().to_string(),
            "Named credential provider does not match deployment provider"
        );
    }

    #[test]
    fn credential_wins_on_overlap() {
        let params = json!({"api_key": "inline", "api_base": "https://inline", "model": "m", "timeout": 5});
        let cred = json!({"api_key": "cred", "api_version": "2024-01-01", "api_base": ""});
        let eff = effective_params(params.as_object().unwrap(), Some(cred.as_object().unwrap()));
        assert_eq!(eff["api_key"], "cred");
        assert_eq!(eff["api_version"], "2024-01-01");
        assert_eq!(eff["api_base"], "https://inline", "an empty credential value does not erase");
        assert_eq!(eff["timeout"], 5);
    }

    fn stored() -> Deployment {
        let now = chrono::Utc::now();
        Deployment {
            deployment_id: "d1".into(),
            model_name: "m".into(),
            named_credential_id: None,
            deltallm_params: json!({"provider": "openai", "model": "gpt-4o", "api_key": "old", "api_base": "https://a/v1", "timeout": 5}).as_object().unwrap().clone(),
            model_info: json!({"mode": "chat", "weight": 3}).as_object().unwrap().clone(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn edge_1_update_keeps_omitted_key_and_drops_it_on_provider_change() {
        let patch = DeploymentPatch::from_json(&json!({"deltallm_params": {"timeout": null, "rpm": 10}})).unwrap();
        let merged = patch.apply(&stored());
        assert_eq!(merged.deltallm_params["api_key"], "old");
        assert!(!merged.deltallm_params.contains_key("timeout"), "null deletes");
        assert_eq!(merged.deltallm_params["rpm"], 10);
        assert_eq!(merged.model_info["weight"], 3, "model_info kept when omitted");

        let patch = DeploymentPatch::from_json(
            &json!({"deltallm_params": {"provider": "groq"}, "model_info": {"mode": "chat"}}),
        )
        .unwrap();
        let merged = patch.apply(&stored());
        assert!(!merged.deltallm_params.contains_key("api_key") && !merged.deltallm_params.contains_key("api_base"));
        assert_eq!(merged.deltallm_params["timeout"], 5, "non-connection fields survive");
        assert!(!merged.model_info.contains_key("weight"), "sent model_info replaces wholesale");

        let patch = DeploymentPatch::from_json(&json!({"named_credential_id": "c9"})).unwrap();
        assert_eq!(patch.apply(&stored()).named_credential_id.as_deref(), Some("c9"));
        let unlink = DeploymentPatch::from_json(&json!({"named_credential_id": ""})).unwrap();
        let mut linked = stored();
        linked.named_credential_id = Some("c9".into());
        assert_eq!(unlink.apply(&linked).named_credential_id, None);
    }

    #[test]
    fn derived_values_follow_dep_7() {
        let mut d = stored();
        assert_eq!(d.weight(), 3);
        d.model_info.remove("weight");
        d.deltallm_params.insert("weight".into(), json!(0));
        assert_eq!(d.weight(), 1, "0 becomes 1");
        d.model_info.insert("rpm_limit".into(), json!(7));
        d.deltallm_params.insert("rpm".into(), json!(99));
        d.deltallm_params.insert("tpm".into(), json!(1000));
        assert_eq!((d.rpm_limit(), d.tpm_limit()), (Some(7), Some(1000)));
        assert_eq!(d.priority(), 0);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let shown = format!("{:?}", stored());
        assert!(!shown.contains("old") && shown.contains("***REDACTED***"), "{shown}");
        let shown = format!("{:?}", input(base()));
        assert!(!shown.contains("\"k\""), "{shown}");
    }

    #[test]
    fn dep_3_warning_only_when_lists_differ() {
        let same = vec![("a".to_owned(), vec!["x".to_owned()]), ("b".to_owned(), vec!["x".to_owned()])];
        assert!(access_group_warning("m", &same).is_none());
        let differ = vec![("a".to_owned(), vec!["x".to_owned()]), ("b".to_owned(), vec![])];
        let w = access_group_warning("m", &differ).unwrap();
        assert!(w.contains("'m'") && w.contains("a: [x]") && w.contains("b: []"), "{w}");
    }

    #[test]
    fn generated_ids_are_name_plus_8_hex() {
        let id = generate_id("gpt-4o");
        let hex = id.strip_prefix("gpt-4o-").unwrap();
        assert!(hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
