//! Router settings (CFG-5) shared by config loading and the runtime.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// Every RUN-8 strategy name, in RUN-8 order (the router's `Strategy` mirrors it).
pub const ROUTING_STRATEGIES: [&str; 9] = [
    "simple-shuffle",
    "weighted",
    "priority-based-routing",
    "least-busy",
    "latency-based-routing",
    "cost-based-routing",
    "usage-based-routing",
    "rate-limit-aware",
    "tag-based-routing",
];

/// Group → ordered fallback groups (CFG-5 `deltallm_settings.*fallbacks`).
pub type FallbackMap = BTreeMap<String, Vec<String>>;

/// Merge a CFG-5 fallback list `[{group: [groups]}, ...]` into one map;
/// a later entry for the same group wins. Blank names are dropped, a group
/// never falls back to itself, and duplicates keep their first position.
pub fn merge_fallbacks(list: &[Value], field: &str) -> Result<FallbackMap> {
    let mut out = FallbackMap::new();
    for (i, item) in list.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(Error::invalid(format!("{field}[{i}] must be an object like {{\"group\": [\"other\"]}}")));
        };
        for (group, targets) in obj {
            let group = group.trim();
            let Value::Array(targets) = targets else {
                return Err(Error::invalid(format!("{field}[{i}].{group} must be a list of group names")));
            };
            let mut chain: Vec<String> = Vec::with_capacity(targets.len());
            for t in targets {
                let Value::String(t) = t else {
                    return Err(Error::invalid(format!("{field}[{i}].{group} must be a list of group names")));
                };
                let t = t.trim();
                if !t.is_empty() && t != group && !chain.iter().any(|c| c == t) {
                    chain.push(t.to_owned());
                }
            }
            if !group.is_empty() {
                out.insert(group.to_owned(), chain);
            }
        }
    }
    Ok(out)
}

/// `router_settings` with the reference defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSettings {
    /// Strategy name (RUN-8).
    pub routing_strategy: String,
    /// Retries per deployment.
    pub num_retries: u32,
    /// Base retry back-off in seconds (0 → 1 s).
    pub retry_after: f64,
    /// Per-attempt deadline in seconds.
    pub timeout: f64,
    /// Cooldown length in seconds.
    pub cooldown_time: f64,
    /// Consecutive failures tolerated before cooldown.
    pub allowed_fails: u32,
    /// Drop deployments at ≥ 100 % utilization before the strategy.
    pub enable_pre_call_checks: bool,
    /// Public alias → model group.
    pub model_group_alias: std::collections::BTreeMap<String, String>,
    /// Route groups from config (used only when the database has none).
    pub route_groups: Vec<serde_json::Value>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            routing_strategy: "simple-shuffle".into(),
            num_retries: 0,
            retry_after: 0.0,
            timeout: 600.0,
            cooldown_time: 60.0,
            allowed_fails: 2,
            enable_pre_call_checks: false,
            model_group_alias: Default::default(),
            route_groups: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fallback_lists_merge_later_wins() {
        let list = [json!({"gpt": ["claude", "gpt", " llama ", "claude"]}), json!({"a": []}), json!({"a": ["b"]})];
        let m = merge_fallbacks(&list, "fallbacks").unwrap();
        assert_eq!(m["gpt"], ["claude", "llama"]);
        assert_eq!(m["a"], ["b"]);
        for (bad, want) in [
            (json!(["gpt"]), "fallbacks[0] must be an object"),
            (json!({"gpt": "claude"}), "must be a list"),
            (json!({"gpt": [1]}), "must be a list"),
        ] {
            let err = merge_fallbacks(&[bad], "fallbacks").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
