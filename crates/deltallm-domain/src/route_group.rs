//! Route groups (ADM-6): a callable key with its own ordered member list,
//! optional strategy and metadata. Write normalization and validation live
//! here so the admin API and config loading apply the same rules.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::deployment::Mode;
use crate::settings::ROUTING_STRATEGIES;
use crate::{Error, Result, access_groups};

/// Longest accepted group key.
pub const MAX_KEY_LEN: usize = 128;

/// A stored route group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteGroup {
    /// Unique callable key.
    pub group_key: String,
    /// Display name (defaults to the key).
    pub name: String,
    /// Workload mode every member must serve.
    pub mode: Mode,
    /// RUN-8 strategy for this group; `None` = the policy's or the global one.
    pub routing_strategy: Option<String>,
    /// Disabled groups are not callable.
    pub enabled: bool,
    /// `access_groups` (VAL-9, normalized) and `default_prompt`, plus unknown keys kept.
    pub metadata: Map<String, Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
}

impl RouteGroup {
    /// Normalized `metadata.access_groups`.
    pub fn access_groups(&self) -> Vec<String> {
        access_groups::normalize_list(self.metadata.get("access_groups"), "metadata.access_groups").unwrap_or_default()
    }
}

/// One member of a route group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteGroupMember {
    /// Owning group.
    pub group_key: String,
    /// Member deployment.
    pub deployment_id: String,
    /// Disabled members are not routed to.
    pub enabled: bool,
    /// Weight override (≥ 1); `None` = the deployment's own.
    pub weight: Option<u32>,
    /// Priority override; `None` = the deployment's own.
    pub priority: Option<u32>,
}

/// RUN-1/ADM-6 group key rule: trimmed, 1..=128 characters, starting with a
/// letter or digit, then letters, digits and `. _ - : @`. No `/`, so the key
/// is one path segment in `/route-groups/{key}/...`.
pub fn normalize_key(raw: &str) -> Result<String> {
    let key = raw.trim();
    let b = key.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_KEY_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':' | b'@'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(Error::invalid(format!(
            "Invalid group_key '{key}': use letters, digits, '.', '_', '-', ':' or '@', starting with a letter or digit (at most {MAX_KEY_LEN} characters)"
        )))
    }
}

/// Validate a RUN-8 strategy name.
pub fn validate_strategy(name: &str, field: &str) -> Result<String> {
    let name = name.trim();
    if ROUTING_STRATEGIES.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(Error::invalid(format!(
            "{field} '{name}' is not a routing strategy; use one of {}",
            ROUTING_STRATEGIES.join(", ")
        )))
    }
}

fn object(value: &Value) -> Result<&Map<String, Value>> {
    value.as_object().ok_or_else(|| Error::invalid("request body must be a JSON object"))
}

fn reject_unknown(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    let mut unknown: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(Error::invalid(format!("{what} has unknown fields: {}", unknown.join(", "))))
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid(format!("{key} must be a boolean"))),
    }
}

/// An optional non-negative integer field: absent → `None`, `null` → `Some(None)`.
fn opt_u32(obj: &Map<String, Value>, key: &str, min: u32) -> Result<Option<Option<u32>>> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= min => Ok(Some(Some(n))),
            _ => Err(Error::invalid(format!("{key} must be an integer ≥ {min}"))),
        },
    }
}

fn metadata(value: Option<&Value>) -> Result<Map<String, Value>> {
    let mut meta = match value {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(Error::invalid("metadata must be an object")),
    };
    let groups = access_groups::normalize_list(meta.get("access_groups"), "metadata.access_groups")?;
    meta.insert("access_groups".into(), Value::from(groups));
    match meta.get("default_prompt") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(Error::invalid("metadata.default_prompt must be a string")),
    }
    Ok(meta)
}

const GROUP_FIELDS: [&str; 7] = ["group_key", "name", "mode", "routing_strategy", "enabled", "metadata", "members"];

/// A route-group create (`members` optional) or the merged result of an update.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteGroupInput {
    /// The group.
    pub group: RouteGroup,
    /// Members sent with a create, in order.
    pub members: Vec<MemberInput>,
}

impl RouteGroupInput {
    /// Read a create body: `group_key` required; `name` defaults to the key,
    /// `mode` to chat, `enabled` to true.
    pub fn from_create(value: &Value, now: DateTime<Utc>) -> Result<Self> {
        let obj = object(value)?;
        reject_unknown(obj, &GROUP_FIELDS, "route group")?;
        let group_key = match obj.get("group_key") {
            Some(Value::String(s)) => normalize_key(s)?,
            None | Some(Value::Null) => return Err(Error::invalid("group_key is required")),
            Some(_) => return Err(Error::invalid("group_key must be a string")),
        };
        let mut group = RouteGroup {
            name: group_key.clone(),
            group_key,
            mode: Mode::Chat,
            routing_strategy: None,
            enabled: true,
            metadata: metadata(None)?,
            created_at: now,
            updated_at: now,
        };
        apply_fields(&mut group, obj)?;
        let members = match obj.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(MemberInput::from_json).collect::<Result<_>>()?,
            Some(_) => return Err(Error::invalid("members must be an array")),
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = members.iter().find(|m| !seen.insert(m.deployment_id.as_str())) {
            return Err(Error::invalid(format!("members lists deployment '{}' twice", dup.deployment_id)));
        }
        Ok(Self { group, members })
    }

    /// Merge an update body into `stored`: omitted fields are kept,
    /// `routing_strategy: null` clears it, a sent `group_key` must match.
    pub fn apply_update(stored: &RouteGroup, value: &Value, now: DateTime<Utc>) -> Result<RouteGroup> {
        let obj = object(value)?;
        reject_unknown(obj, &GROUP_FIELDS[..6], "route group update")?;
        if let Some(k) = obj.get("group_key").filter(|v| !v.is_null()) {
            let k = k.as_str().map(str::trim).ok_or_else(|| Error::invalid("group_key must be a string"))?;
            if k != stored.group_key {
                return Err(Error::invalid("group_key cannot be changed"));
            }
        }
        let mut group = stored.clone();
        apply_fields(&mut group, obj)?;
        group.updated_at = now;
        Ok(group)
    }
}

fn apply_fields(group: &mut RouteGroup, obj: &Map<String, Value>) -> Result<()> {
    match obj.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.trim().is_empty() => group.name = s.trim().to_owned(),
        Some(_) => return Err(Error::invalid("name must be a non-empty string")),
    }
    match obj.get("mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            group.mode = Mode::parse(s.trim()).map_err(|_| {
                Error::invalid(format!(
                    "mode '{}' is not supported; use one of chat, embedding, image_generation, audio_speech, audio_transcription, rerank",
                    s.trim()
                ))
            })?
        }
        Some(_) => return Err(Error::invalid("mode must be a string")),
    }
    match obj.get("routing_strategy") {
        None => {}
        Some(Value::Null) => group.routing_strategy = None,
        Some(Value::String(s)) if s.trim().is_empty() => group.routing_strategy = None,
        Some(Value::String(s)) => group.routing_strategy = Some(validate_strategy(s, "routing_strategy")?),
        Some(_) => return Err(Error::invalid("routing_strategy must be a string")),
    }
    if let Some(b) = bool_field(obj, "enabled")? {
        group.enabled = b;
    }
    if let Some(m) = obj.get("metadata") {
        group.metadata = metadata(Some(m))?;
    }
    Ok(())
}

/// A member upsert body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInput {
    /// Member deployment (must exist).
    pub deployment_id: String,
    /// Default true.
    pub enabled: Option<bool>,
    /// `Some(None)` clears the override.
    pub weight: Option<Option<u32>>,
    /// `Some(None)` clears the override.
    pub priority: Option<Option<u32>>,
}

impl MemberInput {
    /// Read `{deployment_id, enabled?, weight? (≥ 1), priority? (≥ 0)}`.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::invalid("a member must be a JSON object"))?;
        reject_unknown(obj, &["deployment_id", "enabled", "weight", "priority"], "member")?;
        let deployment_id = match obj.get("deployment_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => return Err(Error::invalid("member deployment_id is required")),
        };
        Ok(Self {
            deployment_id,
            enabled: bool_field(obj, "enabled")?,
            weight: opt_u32(obj, "weight", 1)?,
            priority: opt_u32(obj, "priority", 0)?,
        })
    }

    /// The stored member after this upsert (`existing` keeps omitted fields).
    pub fn merge(self, group_key: &str, existing: Option<&RouteGroupMember>) -> RouteGroupMember {
        RouteGroupMember {
            group_key: group_key.to_owned(),
            enabled: self.enabled.or(existing.map(|e| e.enabled)).unwrap_or(true),
            weight: self.weight.unwrap_or(existing.and_then(|e| e.weight)),
            priority: self.priority.unwrap_or(existing.and_then(|e| e.priority)),
            deployment_id: self.deployment_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    #[test]
    fn group_keys() {
        for (raw, want) in [("support", "support"), (" eu-chat.v2 ", "eu-chat.v2"), ("a:b@c_d", "a:b@c_d")] {
            assert_eq!(normalize_key(raw).unwrap(), want);
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in ["", "  ", "-x", "a/b", "has space", "ünï", long.as_str()] {
            assert!(normalize_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_defaults_and_normalization() {
        let body = json!({"group_key": "support", "metadata": {"access_groups": ["Beta", "beta", "x"], "default_prompt": "be nice"}});
        let input = RouteGroupInput::from_create(&body, now()).unwrap();
        let g = input.group;
        assert_eq!(
            (g.name.as_str(), g.mode, g.enabled, g.routing_strategy.as_deref()),
            ("support", Mode::Chat, true, None)
        );
        assert_eq!(g.metadata["access_groups"], json!(["beta", "x"]));
        assert_eq!(g.access_groups(), ["beta", "x"]);
        assert!(input.members.is_empty());
    }

    #[test]
    fn create_rejections() {
        let cases = [
            (json!({}), "group_key is required"),
            (json!({"group_key": 5}), "group_key must be a string"),
            (json!({"group_key": "a/b"}), "Invalid group_key"),
            (json!({"group_key": "g", "mode": "video"}), "mode 'video'"),
            (json!({"group_key": "g", "routing_strategy": "round-robin"}), "not a routing strategy"),
            (json!({"group_key": "g", "enabled": "yes"}), "enabled must be a boolean"),
            (json!({"group_key": "g", "metadata": []}), "metadata must be an object"),
            (json!({"group_key": "g", "metadata": {"access_groups": ["Bad Key"]}}), "Invalid access group"),
            (json!({"group_key": "g", "metadata": {"default_prompt": 3}}), "default_prompt"),
            (json!({"group_key": "g", "colour": "red"}), "unknown fields: colour"),
            (json!({"group_key": "g", "members": {}}), "members must be an array"),
            (json!({"group_key": "g", "members": [{"deployment_id": "a"}, {"deployment_id": "a"}]}), "twice"),
            (json!({"group_key": "g", "members": [{"weight": 1}]}), "deployment_id is required"),
            (json!({"group_key": "g", "members": [{"deployment_id": "a", "weight": 0}]}), "weight must be"),
            (json!({"group_key": "g", "members": [{"deployment_id": "a", "priority": -1}]}), "priority must be"),
            (json!([1]), "JSON object"),
        ];
        for (body, want) in cases {
            let err = RouteGroupInput::from_create(&body, now()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn update_merges_and_clears() {
        let body = json!({"group_key": "g", "name": "G", "routing_strategy": "weighted", "members": [{"deployment_id": "a", "weight": 3}]});
        let created = RouteGroupInput::from_create(&body, now()).unwrap();
        assert_eq!(created.members[0].weight, Some(Some(3)));
        let g = created.group;
        let kept = RouteGroupInput::apply_update(&g, &json!({"enabled": false}), now()).unwrap();
        assert_eq!(
            (kept.name.as_str(), kept.routing_strategy.as_deref(), kept.enabled),
            ("G", Some("weighted"), false)
        );
        let cleared = RouteGroupInput::apply_update(&g, &json!({"routing_strategy": null}), now()).unwrap();
        assert_eq!(cleared.routing_strategy, None);
        assert!(RouteGroupInput::apply_update(&g, &json!({"group_key": "other"}), now()).is_err());
        assert!(RouteGroupInput::apply_update(&g, &json!({"group_key": "g", "mode": "embedding"}), now()).is_ok());
        assert!(RouteGroupInput::apply_update(&g, &json!({"members": []}), now()).is_err());
    }

    #[test]
    fn member_upsert_keeps_omitted_fields() {
        let first = MemberInput::from_json(&json!({"deployment_id": "d", "weight": 4, "priority": 1})).unwrap();
        let stored = first.merge("g", None);
        assert_eq!((stored.enabled, stored.weight, stored.priority), (true, Some(4), Some(1)));
        let second = MemberInput::from_json(&json!({"deployment_id": "d", "enabled": false, "weight": null})).unwrap();
        let updated = second.merge("g", Some(&stored));
        assert_eq!((updated.enabled, updated.weight, updated.priority), (false, None, Some(1)));
    }
}
