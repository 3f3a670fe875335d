//! Settings the embedding application hands to the core. The core never reads
//! the environment or files: the bootstrap crate (or an embedder) fills these.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deltallm_domain::SecretString;
use deltallm_domain::deployment::DeploymentInput;
use deltallm_domain::settings::{FallbackMap, RouterSettings};
use serde::Deserialize;

/// Where the runtime registry takes deployments from (CFG-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentSource {
    /// Config file only.
    ConfigOnly,
    /// Database if it has rows, else config (also on database errors).
    #[default]
    Hybrid,
    /// Database only.
    DbOnly,
}

/// Everything the gateway core needs at start.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Admin and `/v1` master key.
    pub master_key: Option<SecretString>,
    /// `router_settings`.
    pub router: RouterSettings,
    /// DEP-9 fallback key for `openai` deployments without one.
    pub openai_api_key: Option<SecretString>,
    /// DEP-9 fallback base URL.
    pub openai_base_url: String,
    /// Deployment source.
    pub deployment_source: DeploymentSource,
    /// Insert `model_list` into an empty table at start.
    pub bootstrap_from_config: bool,
    /// `model_list` entries from the config file (already secret-resolved).
    pub config_model_list: Vec<DeploymentInput>,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: Duration,
    /// Upstream read timeout when a deployment sets none.
    pub upstream_read_timeout: Duration,
    /// Idle pooled connections kept per upstream host.
    pub upstream_pool_max_idle_per_host: usize,
    /// PEM certificates trusted for HTTPS upstreams besides the system's roots.
    pub upstream_extra_root_certs_pem: Option<Vec<u8>>,
    /// Largest accepted request body.
    pub max_request_body_bytes: usize,
    /// Spend queue capacity; records beyond it are dropped and counted.
    pub spend_queue_capacity: usize,
    /// Run background health checks.
    pub background_health_checks: bool,
    /// Interval of background health checks.
    pub health_check_interval: Duration,
    /// RUN-10 `fallbacks`: group → groups tried after the group's own deployments.
    pub fallbacks: FallbackMap,
    /// Groups tried once each when an upstream says the prompt is too long.
    pub context_window_fallbacks: FallbackMap,
    /// Groups tried once each when an upstream content filter refuses.
    pub content_policy_fallbacks: FallbackMap,
    /// Failover steps kept for `/health/fallback-events`.
    pub failover_event_history_size: usize,
    /// How often to check the database for writes made by other replicas
    /// (or another process on the same SQLite file) and rebuild; `None` = never.
    pub registry_poll_interval: Option<Duration>,
    /// Resolves `os.environ/NAME` references stored in deployments and
    /// named credentials, at every registry build (CFG-3, CRED-6).
    pub secret_refs: SecretRefs,
}

/// Lookup of `os.environ/NAME` secret references (CFG-3). The core never
/// reads the environment itself: the bootstrap hands in a lookup (an
/// embedder may hand in its own). Without one, references resolve to
/// nothing and the field is treated as absent (CRED-6).
#[derive(Clone, Default)]
pub struct SecretRefs(Option<Arc<EnvLookup>>);

/// Reads one environment-style name.
type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The prefix of an environment reference.
pub const ENV_REF_PREFIX: &str = "os.environ/";

impl SecretRefs {
    /// Resolve names with `lookup`.
    pub fn new(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(lookup)))
    }

    /// `Some(resolved)` when `value` is a reference (`None` inside = unresolvable);
    /// `None` when it is an ordinary value.
    pub fn resolve(&self, value: &str) -> Option<Option<String>> {
        let name = value.strip_prefix(ENV_REF_PREFIX)?;
        Some(self.0.as_ref().and_then(|lookup| lookup(name)).filter(|v| !v.is_empty()))
    }
}

impl fmt::Debug for SecretRefs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "SecretRefs(lookup)" } else { "SecretRefs(none)" })
    }
}

impl GatewaySettings {
    /// The change-poll interval when polling is on (`None` and zero mean off).
    pub fn registry_polling(&self) -> Option<Duration> {
        self.registry_poll_interval.filter(|d| !d.is_zero())
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            master_key: None,
            router: RouterSettings::default(),
            openai_api_key: None,
            openai_base_url: "https://api.openai.com/v1".into(),
            deployment_source: DeploymentSource::Hybrid,
            bootstrap_from_config: true,
            config_model_list: Vec::new(),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_read_timeout: Duration::from_secs(300),
            upstream_pool_max_idle_per_host: 256,
            upstream_extra_root_certs_pem: None,
            max_request_body_bytes: 10 * 1024 * 1024,
            spend_queue_capacity: 10_000,
            background_health_checks: false,
            health_check_interval: Duration::from_secs(300),
            fallbacks: FallbackMap::new(),
            context_window_fallbacks: FallbackMap::new(),
            content_policy_fallbacks: FallbackMap::new(),
            failover_event_history_size: 1000,
            registry_poll_interval: Some(Duration::from_secs(30)),
            secret_refs: SecretRefs::default(),
        }
    }
}
