//! Versioned route-group policies (ADM-7): the policy document, its
//! validation against the group's members, and the effective member pool
//! the registry routes over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route_group::{RouteGroupMember, validate_strategy};
use crate::{Error, Result};

/// RUN-11 error classes a policy may name in `retry.retryable_error_classes`.
pub const RETRY_CLASSES: [&str; 5] =
    ["timeout", "rate_limit", "context_window_exceeded", "content_policy_violation", "generic"];

/// A RUN-11 error class as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// Attempt deadline, read timeout, upstream 408.
    Timeout,
    /// Upstream 429.
    RateLimit,
    /// Prompt does not fit the context window.
    ContextWindowExceeded,
    /// Content filter.
    ContentPolicyViolation,
    /// Anything else (5xx, transport).
    Generic,
}

impl RetryClass {
    /// Parse a RUN-11 class name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "timeout" => Self::Timeout,
            "rate_limit" => Self::RateLimit,
            "context_window_exceeded" => Self::ContextWindowExceeded,
            "content_policy_violation" => Self::ContentPolicyViolation,
            "generic" => Self::Generic,
            _ => return None,
        })
    }

    /// Bit used in a class set.
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Policy lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStatus {
    /// Being edited; at most one per group.
    Draft,
    /// In force; at most one per group.
    Published,
    /// Replaced by a later publish.
    Archived,
}

impl PolicyStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Archived => "archived",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draft" => Some(Self::Draft),
            "published" => Some(Self::Published),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVersion {
    /// Owning group.
    pub group_key: String,
    /// 1, 2, ... per group.
    pub version: u32,
    /// Lifecycle state.
    pub status: PolicyStatus,
    /// The normalized policy document.
    pub policy: Value,
    /// When this version was written.
    pub created_at: DateTime<Utc>,
    /// When it was published, if ever.
    pub published_at: Option<DateTime<Utc>>,
}

/// A policy member override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyMember {
    /// Must be a member of the group.
    pub deployment_id: String,
    /// Default true; false takes it out of the pool.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// ≥ 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// ≥ 0, lower preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

fn yes() -> bool {
    true
}

/// Per-attempt deadline (RUN-17).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Milliseconds, ≥ 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_ms: Option<u64>,
    /// Seconds, ≥ 0.001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_seconds: Option<f64>,
}

/// Retry overrides (RUN-10, RUN-11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries per deployment (replaces `num_retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Replaces the default retryable set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable_error_classes: Option<Vec<String>>,
}

/// A validated policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `fallback` or `weighted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// RUN-8 strategy; wins over the mode's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Member overrides, in preference order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<PolicyMember>,
    /// Per-attempt deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retry overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// One deployment of the effective pool, in routing order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolMember {
    /// Deployment.
    pub deployment_id: String,
    /// Weight override, if any (else the deployment's own).
    pub weight: Option<u32>,
    /// Priority override, if any (else the deployment's own).
    pub priority: Option<u32>,
}

impl Policy {
    /// Parse and check the document on its own (shape, ranges, names).
    pub fn parse(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::invalid("policy must be a JSON object"));
        }
        let p: Policy =
            serde_json::from_value(value.clone()).map_err(|e| Error::invalid(format!("Invalid policy: {e}")))?;
        match p.mode.as_deref() {
            None | Some("fallback" | "weighted") => {}
            Some(m @ ("conditional" | "adaptive")) => {
                return Err(Error::invalid(format!("policy mode '{m}' is not supported; use fallback or weighted")));
            }
            Some(m) => return Err(Error::invalid(format!("policy mode '{m}' is unknown; use fallback or weighted"))),
        }
        if let Some(s) = &p.strategy {
            validate_strategy(s, "policy strategy")?;
        }
        let mut seen = std::collections::HashSet::new();
        for m in &p.members {
            if !seen.insert(m.deployment_id.as_str()) {
                return Err(Error::invalid(format!("policy members lists '{}' twice", m.deployment_id)));
            }
            if m.weight == Some(0) {
                return Err(Error::invalid(format!("policy member '{}': weight must be ≥ 1", m.deployment_id)));
            }
        }
        if let Some(t) = &p.timeouts {
            match (t.global_ms, t.global_seconds) {
                (Some(ms), None) if ms >= 1 => {}
                (None, Some(s)) if s.is_finite() && s >= 0.001 => {}
                (Some(_), Some(_)) => {
                    return Err(Error::invalid("policy timeouts: give global_ms or global_seconds, not both"));
                }
                (None, None) => return Err(Error::invalid("policy timeouts needs global_ms or global_seconds")),
                _ => return Err(Error::invalid("policy timeouts: global_ms must be ≥ 1, global_seconds ≥ 0.001")),
            }
        }
        if let Some(classes) = p.retry.as_ref().and_then(|r| r.retryable_error_classes.as_ref())
            && let Some(bad) = classes.iter().find(|c| RetryClass::parse(c).is_none())
        {
            return Err(Error::invalid(format!(
                "retry.retryable_error_classes: '{bad}' is not an error class; use {}",
                RETRY_CLASSES.join(", ")
            )));
        }
        Ok(p)
    }

    /// ADM-7 validation against the group's current members: every policy
    /// member belongs to the group and the active pool is non-empty.
    pub fn validate(value: &Value, group_members: &[RouteGroupMember]) -> Result<Self> {
        let p = Self::parse(value)?;
        if let Some(m) = p.members.iter().find(|m| !group_members.iter().any(|g| g.deployment_id == m.deployment_id)) {
            return Err(Error::invalid(format!("policy member '{}' is not a member of this group", m.deployment_id)));
        }
        if p.pool(group_members).is_empty() {
            return Err(Error::invalid("policy leaves no enabled member: the active pool must not be empty"));
        }
        Ok(p)
    }

    /// The normalized document as stored.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Strategy this policy asks for: explicit `strategy`, else `fallback` →
    /// `priority-based-routing`, `weighted` → `weighted`, else none.
    pub fn strategy_name(&self) -> Option<&str> {
        self.strategy.as_deref().map(str::trim).or(match self.mode.as_deref() {
            Some("fallback") => Some("priority-based-routing"),
            Some("weighted") => Some("weighted"),
            _ => None,
        })
    }

    /// Per-attempt deadline.
    pub fn timeout(&self) -> Option<Duration> {
        let t = self.timeouts.as_ref()?;
        match (t.global_ms, t.global_seconds) {
            (Some(ms), _) => Some(Duration::from_millis(ms)),
            (None, Some(s)) => Duration::try_from_secs_f64(s).ok(),
            _ => None,
        }
    }

    /// Retries per deployment.
    pub fn max_attempts(&self) -> Option<u32> {
        self.retry.as_ref().and_then(|r| r.max_attempts)
    }

    /// Retryable classes as a bit set ([`RetryClass::bit`]); `None` = defaults.
    pub fn retryable_mask(&self) -> Option<u8> {
        let classes = self.retry.as_ref()?.retryable_error_classes.as_ref()?;
        Some(classes.iter().filter_map(|c| RetryClass::parse(c)).fold(0, |acc, c| acc | c.bit()))
    }

    /// The enabled members in routing order: the policy's members first (its
    /// order), then the group's other members (group order). Overrides: the
    /// policy's weight/priority, else the member's. In `fallback` mode
    /// without an explicit strategy a missing priority is the list index.
    pub fn pool(&self, group_members: &[RouteGroupMember]) -> Vec<PoolMember> {
        let listed = self
            .members
            .iter()
            .filter_map(|pm| group_members.iter().find(|g| g.deployment_id == pm.deployment_id).map(|g| (g, Some(pm))));
        let rest = group_members
            .iter()
            .filter(|g| !self.members.iter().any(|pm| pm.deployment_id == g.deployment_id))
            .map(|g| (g, None));
        let index_priority = self.mode.as_deref() == Some("fallback") && self.strategy.is_none();
        listed
            .chain(rest)
            .enumerate()
            .filter(|(_, (g, pm))| g.enabled && pm.is_none_or(|p| p.enabled))
            .map(|(i, (g, pm))| PoolMember {
                deployment_id: g.deployment_id.clone(),
                weight: pm.and_then(|p| p.weight).or(g.weight),
                priority: pm
                    .and_then(|p| p.priority)
                    .or(g.priority)
                    .or_else(|| index_priority.then(|| u32::try_from(i).unwrap_or(u32::MAX))),
            })
            .collect()
    }
}

/// The pool of a group without a published policy: enabled members in order.
pub fn default_pool(group_members: &[RouteGroupMember]) -> Vec<PoolMember> {
    group_members
        .iter()
        .filter(|g| g.enabled)
        .map(|g| PoolMember { deployment_id: g.deployment_id.clone(), weight: g.weight, priority: g.priority })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn members(ids: &[(&str, bool)]) -> Vec<RouteGroupMember> {
        ids.iter()
            .map(|(id, enabled)| RouteGroupMember {
                group_key: "g".into(),
                deployment_id: (*id).into(),
                enabled: *enabled,
                weight: None,
                priority: None,
            })
            .collect()
    }

    #[test]
    fn rejections() {
        let ms = members(&[("a", true), ("b", true), ("off", false)]);
        let cases = [
            (json!([]), "JSON object"),
            (json!({"mode": "conditional"}), "not supported"),
            (json!({"mode": "adaptive"}), "not supported"),
            (json!({"mode": "random"}), "unknown"),
            (json!({"strategy": "round-robin"}), "not a routing strategy"),
            (json!({"members": [{"deployment_id": "zzz"}]}), "not a member"),
            (json!({"members": [{"deployment_id": "a"}, {"deployment_id": "a"}]}), "twice"),
            (json!({"members": [{"deployment_id": "a", "weight": 0}]}), "weight must be"),
            (json!({"members": [{"deployment_id": "a", "weight": -1}]}), "Invalid policy"),
            (json!({"members": [{"deployment_id": "a", "priority": 1.5}]}), "Invalid policy"),
            (json!({"members": [{"deployment_id": "a", "colour": 1}]}), "unknown field"),
            (json!({"timeouts": {}}), "needs global_ms"),
            (json!({"timeouts": {"global_ms": 0}}), "must be ≥ 1"),
            (json!({"timeouts": {"global_seconds": 0.0001}}), "0.001"),
            (json!({"timeouts": {"global_ms": 5, "global_seconds": 1}}), "not both"),
            (json!({"retry": {"max_attempts": -1}}), "Invalid policy"),
            (json!({"retry": {"retryable_error_classes": ["timeout", "oops"]}}), "'oops'"),
            (json!({"retry": {"backoff": 1}}), "unknown field"),
            (json!({"unknown": true}), "unknown field"),
            (
                json!({"members": [{"deployment_id": "a", "enabled": false}, {"deployment_id": "b", "enabled": false}]}),
                "active pool",
            ),
        ];
        for (doc, want) in cases {
            let err = Policy::validate(&doc, &ms).unwrap_err().to_string();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }

    #[test]
    fn accepted_documents_round_trip() {
        let ms = members(&[("a", true), ("b", true)]);
        let doc = json!({
            "mode": "weighted",
            "members": [{"deployment_id": "b", "weight": 3}, {"deployment_id": "a", "enabled": true, "priority": 0}],
            "timeouts": {"global_ms": 250},
            "retry": {"max_attempts": 2, "retryable_error_classes": ["timeout", "generic"]}
        });
        let p = Policy::validate(&doc, &ms).unwrap();
        assert_eq!(p.strategy_name(), Some("weighted"));
        assert_eq!(p.timeout(), Some(Duration::from_millis(250)));
        assert_eq!(p.max_attempts(), Some(2));
        assert_eq!(p.retryable_mask(), Some(RetryClass::Timeout.bit() | RetryClass::Generic.bit()));
        let again = Policy::parse(&p.to_json()).unwrap();
        assert_eq!(again, p);
        let secs = Policy::parse(&json!({"timeouts": {"global_seconds": 1.5}})).unwrap();
        assert_eq!(secs.timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(Policy::parse(&json!({})).unwrap().strategy_name(), None);
    }

    #[test]
    fn strategy_precedence() {
        let table = [
            (json!({"mode": "fallback"}), Some("priority-based-routing")),
            (json!({"mode": "weighted"}), Some("weighted")),
            (json!({"mode": "fallback", "strategy": "least-busy"}), Some("least-busy")),
            (json!({"strategy": "latency-based-routing"}), Some("latency-based-routing")),
            (json!({"retry": {"max_attempts": 0}}), None),
        ];
        for (doc, want) in table {
            assert_eq!(Policy::parse(&doc).unwrap().strategy_name(), want, "{doc}");
        }
    }

    #[test]
    fn pool_order_overrides_and_fallback_priorities() {
        let mut ms = members(&[("a", true), ("b", true), ("c", true), ("off", false)]);
        ms[0].weight = Some(7);
        let p = Policy::validate(
            &json!({"mode": "fallback", "members": [{"deployment_id": "c"}, {"deployment_id": "a", "priority": 9}]}),
            &ms,
        )
        .unwrap();
        let pool = p.pool(&ms);
        let view: Vec<_> = pool.iter().map(|m| (m.deployment_id.as_str(), m.weight, m.priority)).collect();
        assert_eq!(view, [("c", None, Some(0)), ("a", Some(7), Some(9)), ("b", None, Some(2))]);
        // With an explicit strategy, missing priorities stay missing.
        let p = Policy::validate(&json!({"mode": "fallback", "strategy": "weighted"}), &ms).unwrap();
        assert!(p.pool(&ms).iter().all(|m| m.priority.is_none()));
        // Policy can disable a member; it cannot enable a member the group disabled.
        let p = Policy::validate(
            &json!({"members": [{"deployment_id": "a", "enabled": false}, {"deployment_id": "off", "enabled": true}]}),
            &ms,
        )
        .unwrap();
        let ids: Vec<_> = p.pool(&ms).into_iter().map(|m| m.deployment_id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(default_pool(&ms).len(), 3);
    }

    #[test]
    fn status_names() {
        for s in [PolicyStatus::Draft, PolicyStatus::Published, PolicyStatus::Archived] {
            assert_eq!(PolicyStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PolicyStatus::parse("live"), None);
        for name in RETRY_CLASSES {
            assert!(RetryClass::parse(name).is_some());
        }
    }
}
