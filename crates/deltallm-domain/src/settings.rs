//! Router settings (CFG-5) shared by config loading and the runtime.

use serde::{Deserialize, Serialize};

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
