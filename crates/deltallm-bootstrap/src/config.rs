//! Layered configuration (CFG-1..5): defaults, then the YAML file, then
//! `DELTALLM_*` environment variables. Our own sections reject unknown keys
//! with the key's path; `litellm_params`/`litellm_settings` are accepted aliases.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use deltallm_core::{DeploymentSource, GatewaySettings};
use deltallm_domain::SecretString;
use deltallm_domain::deployment::DeploymentInput;
use deltallm_domain::settings::{RouterSettings, merge_fallbacks};
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// The YAML document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Deployments to bootstrap (CFG-4).
    pub model_list: Vec<Value>,
    /// Router defaults (CFG-5).
    pub router_settings: RouterSettings,
    /// Runtime behaviour (fallback lists).
    #[serde(alias = "litellm_settings")]
    pub deltallm_settings: DeltallmSettings,
    /// Process-level settings (CFG-2).
    pub general_settings: GeneralSettings,
    /// Listen address and data directory.
    pub server: ServerSettings,
}

/// `deltallm_settings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltallmSettings {
    /// `[{group: [groups]}]` general fallbacks.
    pub fallbacks: Vec<Value>,
    /// Context-window fallbacks.
    pub context_window_fallbacks: Vec<Value>,
    /// Content-policy fallbacks.
    pub content_policy_fallbacks: Vec<Value>,
}

/// `general_settings` (CFG-2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneralSettings {
    /// Master key (blank = unset; else ≥ 32 chars with letters and digits).
    pub master_key: Option<String>,
    /// Salt key (CRED-10 encryption key material).
    pub salt_key: Option<String>,
    /// Older salt keys still accepted for reading during a rotation.
    pub previous_salt_keys: Vec<String>,
    /// Database URL (`sqlite://...` or `postgres://...`).
    pub database_url: Option<String>,
    /// Redis URL (shared state for multi-replica operation).
    pub redis_url: Option<String>,
    /// `fail_open` or `fail_closed`.
    pub redis_degraded_mode: Option<String>,
    /// Deployment source (CFG-4).
    pub model_deployment_source: DeploymentSource,
    /// Insert `model_list` into an empty table at start.
    pub model_deployment_bootstrap_from_config: bool,
    /// Run background health checks (RUN-21).
    pub background_health_checks: bool,
    /// Seconds between background health checks.
    pub health_check_interval: u64,
    /// Seconds between checks for writes made by other replicas (0 = off).
    pub registry_poll_interval_seconds: u64,
    /// Upstream read timeout when a deployment sets none (RUN-17).
    pub upstream_http_read_timeout_seconds: u64,
    /// Upstream connect timeout.
    pub upstream_http_connect_timeout_seconds: u64,
    /// Idle pooled connections per upstream host.
    pub upstream_http_pool_max_idle_per_host: usize,
    /// PEM file of extra root certificates for HTTPS upstreams (a private CA),
    /// trusted besides the system's roots.
    pub upstream_ca_bundle: Option<PathBuf>,
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_request_body_bytes: usize,
    /// Spend queue capacity.
    pub spend_queue_capacity: usize,
    /// DEP-9 fallback OpenAI key.
    pub openai_api_key: Option<String>,
    /// DEP-9 fallback OpenAI base URL.
    pub openai_base_url: Option<String>,
    /// Batch API switch (the Batch API is not part of this build yet).
    pub embeddings_batch_enabled: bool,
    /// Failover steps kept for `/health/fallback-events` (RUN-10).
    pub failover_event_history_size: usize,
}

impl Default for GeneralSettings {
    fn default() -> Self {
        let core = GatewaySettings::default();
        Self {
            master_key: None,
            salt_key: None,
            previous_salt_keys: Vec::new(),
            database_url: None,
            redis_url: None,
            redis_degraded_mode: None,
            model_deployment_source: DeploymentSource::Hybrid,
            model_deployment_bootstrap_from_config: true,
            background_health_checks: core.background_health_checks,
            health_check_interval: core.health_check_interval.as_secs(),
            registry_poll_interval_seconds: core.registry_poll_interval.map_or(0, |d| d.as_secs()),
            upstream_http_read_timeout_seconds: core.upstream_read_timeout.as_secs(),
            upstream_http_connect_timeout_seconds: core.upstream_connect_timeout.as_secs(),
            upstream_http_pool_max_idle_per_host: core.upstream_pool_max_idle_per_host,
            upstream_ca_bundle: None,
            max_request_body_bytes: core.max_request_body_bytes,
            spend_queue_capacity: core.spend_queue_capacity,
            openai_api_key: None,
            openai_base_url: None,
            embeddings_batch_enabled: false,
            failover_event_history_size: core.failover_event_history_size,
        }
    }
}

/// `server` (ours): listen address and data directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Bind host (`DELTALLM_HOST`, default `0.0.0.0`).
    pub host: String,
    /// Bind port (`DELTALLM_PORT`, default 4002).
    pub port: u16,
    /// Embedded data directory (`DELTALLM_DATA_DIR`, default `./deltallm-data`).
    pub data_dir: PathBuf,
    /// Seconds a client connection may take to send a complete request head,
    /// counted from when the gateway starts waiting for it, so an idle
    /// keep-alive connection is closed after this long as well (default 30;
    /// 0 waits forever).
    pub header_read_timeout_seconds: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 4002,
            data_dir: PathBuf::from("deltallm-data"),
            header_read_timeout_seconds: 30,
        }
    }
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed document with secret references resolved.
    pub config: Config,
    /// The file read, if any.
    pub source: Option<PathBuf>,
    /// Things in the document that are accepted but read as nothing, for the
    /// start-up log.
    pub warnings: Vec<String>,
}

/// `DELTALLM_<NAME>` variables and the key path each sets.
const ENV_KEYS: &[(&str, &str)] = &[
    ("master_key", "general_settings.master_key"),
    ("salt_key", "general_settings.salt_key"),
    ("database_url", "general_settings.database_url"),
    ("redis_url", "general_settings.redis_url"),
    ("openai_api_key", "general_settings.openai_api_key"),
    ("openai_base_url", "general_settings.openai_base_url"),
    ("max_request_body_bytes", "general_settings.max_request_body_bytes"),
    ("host", "server.host"),
    ("port", "server.port"),
    ("data_dir", "server.data_dir"),
];

/// CFG-3: resolve `os.environ/NAME` references (missing → null). Other secret
/// managers are refused loudly rather than silently ignored.
fn resolve_refs(value: &mut Value, path: &str) -> Result<(), Error> {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("os.environ/") {
                *value = std::env::var(name).map(Value::String).unwrap_or(Value::Null);
            } else if ["aws.secretsmanager/", "gcp.secretmanager/", "azure.keyvault/"].iter().any(|p| s.starts_with(p))
            {
                let manager = s.split('/').next().unwrap_or_default().to_owned();
                return Err(Error::Config(format!(
                    "{path}: secret manager references ({manager}/...) are not supported by this build; use os.environ/NAME"
                )));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_refs(item, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                resolve_refs(v, &child)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Drop keys whose value resolved to null (unresolvable refs → key absent).
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Load the configuration. `path` = `--config`; else `DELTALLM_CONFIG_PATH`;
/// else `config.yaml` if it exists. An explicitly named file must exist.
pub fn load(path: Option<PathBuf>) -> Result<LoadedConfig, Error> {
    let explicit = path.or_else(|| std::env::var_os("DELTALLM_CONFIG_PATH").map(PathBuf::from));
    let file = match explicit {
        Some(p) if !p.exists() => {
            return Err(Error::Config(format!("config file {} does not exist", p.display())));
        }
        Some(p) => Some(p),
        None => Some(PathBuf::from("config.yaml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::new();
    if let Some(f) = &file {
        figment = figment.merge(Yaml::file_exact(f));
    }
    figment = figment.merge(
        Env::prefixed("DELTALLM_")
            .filter_map(|k| {
                let k = k.as_str().to_ascii_lowercase();
                ENV_KEYS.iter().find(|(name, _)| *name == k).map(|(_, path)| (*path).into())
            })
            .split("."),
    );
    // Nested overrides such as DELTALLM_ROUTER_SETTINGS__NUM_RETRIES=2.
    figment = figment.merge(Env::prefixed("DELTALLM_").filter(|k| k.as_str().contains("__")).split("__"));
    let mut config: Config = figment.extract().map_err(|e| {
        let where_ = file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default();
        Error::Config(format!("invalid configuration{where_}: {e}"))
    })?;
    for (i, entry) in config.model_list.iter_mut().enumerate() {
        resolve_refs(entry, &format!("model_list[{i}]"))?;
        drop_nulls(entry);
    }
    let g = &mut config.general_settings;
    for (name, field) in [
        ("master_key", &mut g.master_key),
        ("salt_key", &mut g.salt_key),
        ("database_url", &mut g.database_url),
        ("redis_url", &mut g.redis_url),
        ("openai_api_key", &mut g.openai_api_key),
        ("openai_base_url", &mut g.openai_base_url),
    ] {
        if let Some(v) = field.take() {
            let mut value = Value::String(v);
            resolve_refs(&mut value, &format!("general_settings.{name}"))?;
            *field = value.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        }
    }
    // Reference configs may carry keys of their own, so an unknown key in an
    // entry is named in the log rather than failing the start.
    let warnings = config
        .model_list
        .iter()
        .enumerate()
        .flat_map(|(i, entry)| {
            deltallm_domain::deployment::unknown_entry_keys(entry).into_iter().map(move |k| {
                format!(
                    "model_list[{i}].{k}: unknown key, ignored (an entry has {})",
                    deltallm_domain::deployment::ENTRY_KEYS.join(", ")
                )
            })
        })
        .collect();
    Ok(LoadedConfig { config, source: file, warnings })
}

/// CFG-1: a present `model_info` materializes defaults (weight 1, priority 0,
/// mode chat) that shadow `deltallm_params.weight`.
fn materialize_model_info(entry: &mut Value) {
    if let Some(Value::Object(info)) = entry.get_mut("model_info") {
        info.entry("weight").or_insert(Value::from(1));
        info.entry("priority").or_insert(Value::from(0));
        info.entry("mode").or_insert(Value::from("chat"));
    }
}

impl LoadedConfig {
    /// Bind address.
    pub fn listen_addr(&self) -> Result<SocketAddr, Error> {
        let s = &self.config.server;
        let ip: IpAddr = s
            .host
            .parse()
            .map_err(|_| Error::Config(format!("server.host / DELTALLM_HOST '{}' is not an IP address", s.host)))?;
        Ok(SocketAddr::new(ip, s.port))
    }

    /// How long a client may take to send a request head (`None`: no limit).
    pub fn header_read_timeout(&self) -> Option<std::time::Duration> {
        let seconds = self.config.server.header_read_timeout_seconds;
        (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
    }

    /// Core settings (model_list parsed; validation happens at gateway start).
    pub fn gateway_settings(&self, master_key: Option<SecretString>) -> Result<GatewaySettings, Error> {
        let g = &self.config.general_settings;
        let mut model_list = Vec::with_capacity(self.config.model_list.len());
        for (i, entry) in self.config.model_list.iter().enumerate() {
            let mut entry = entry.clone();
            materialize_model_info(&mut entry);
            let input =
                DeploymentInput::from_json(&entry).map_err(|e| Error::Config(format!("model_list[{i}]: {e}")))?;
            model_list.push(input);
        }
        let defaults = GatewaySettings::default();
        if g.max_request_body_bytes == 0 {
            return Err(Error::Config("general_settings.max_request_body_bytes must be > 0".into()));
        }
        let strategy = self.config.router_settings.routing_strategy.trim();
        if !deltallm_domain::settings::ROUTING_STRATEGIES.contains(&strategy) {
            return Err(Error::Config(format!(
                "router_settings.routing_strategy '{strategy}' is not a routing strategy; use one of {}",
                deltallm_domain::settings::ROUTING_STRATEGIES.join(", ")
            )));
        }
        let d = &self.config.deltallm_settings;
        let fallbacks = |list: &[Value], field: &str| {
            merge_fallbacks(list, &format!("deltallm_settings.{field}")).map_err(|e| Error::Config(e.to_string()))
        };
        Ok(GatewaySettings {
            fallbacks: fallbacks(&d.fallbacks, "fallbacks")?,
            context_window_fallbacks: fallbacks(&d.context_window_fallbacks, "context_window_fallbacks")?,
            content_policy_fallbacks: fallbacks(&d.content_policy_fallbacks, "content_policy_fallbacks")?,
            failover_event_history_size: g.failover_event_history_size.max(1),
            master_key,
            router: self.config.router_settings.clone(),
            openai_api_key: g.openai_api_key.clone().map(SecretString::new),
            openai_base_url: g.openai_base_url.clone().unwrap_or(defaults.openai_base_url),
            deployment_source: g.model_deployment_source,
            bootstrap_from_config: g.model_deployment_bootstrap_from_config,
            config_model_list: model_list,
            upstream_connect_timeout: Duration::from_secs(g.upstream_http_connect_timeout_seconds.max(1)),
            upstream_read_timeout: Duration::from_secs(g.upstream_http_read_timeout_seconds.max(1)),
            upstream_pool_max_idle_per_host: g.upstream_http_pool_max_idle_per_host,
            upstream_extra_root_certs_pem: g
                .upstream_ca_bundle
                .as_ref()
                .map(|path| {
                    std::fs::read(path).map_err(|e| {
                        Error::Config(format!(
                            "general_settings.upstream_ca_bundle: cannot read {}: {e}",
                            path.display()
                        ))
                    })
                })
                .transpose()?,
            max_request_body_bytes: g.max_request_body_bytes,
            spend_queue_capacity: g.spend_queue_capacity.max(1),
            background_health_checks: g.background_health_checks,
            health_check_interval: Duration::from_secs(g.health_check_interval.max(1)),
            registry_poll_interval: Some(Duration::from_secs(g.registry_poll_interval_seconds))
                .filter(|d| !d.is_zero()),
            secret_refs: deltallm_core::settings::SecretRefs::new(|name| std::env::var(name).ok()),
        })
    }
}
