//! The immutable runtime registry (RUN-1): callable key → ordered deployments,
//! with credentials resolved, connections precomputed and live state attached.
//! Rebuilt off the request path on every write and published with one atomic
//! store; requests load a snapshot once and never touch the database.

use std::collections::HashMap;
use std::sync::Arc;

use deltallm_domain::credential::NamedCredential;
use deltallm_domain::deployment::{Deployment, Mode, effective_params};
use deltallm_domain::params::str_field;
use deltallm_domain::provider;
use deltallm_providers::Connection;
use deltallm_router::{DeploymentState, Member, RouteMeta};
use serde_json::{Map, Value};

use crate::pricing::Pricing;
use crate::settings::GatewaySettings;

/// One deployment as the runtime sees it.
#[derive(Debug)]
pub struct ResolvedDeployment {
    /// Stored record (secrets in memory only).
    pub record: Deployment,
    /// Credential-merged, DEP-9-filled params (what is actually used).
    pub effective_params: Map<String, Value>,
    /// RUN-3 provider.
    pub provider: String,
    /// Workload mode.
    pub mode: Mode,
    /// Name of the linked credential.
    pub credential_name: Option<String>,
    /// Ready-to-call connection; `None` when it could not be built.
    pub connection: Option<Connection>,
    /// Why the connection could not be built.
    pub connection_error: Option<String>,
    /// SPEND-1 prices.
    pub pricing: Pricing,
    /// Live health and load (shared across rebuilds).
    pub state: Arc<DeploymentState>,
}

/// What a callable key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A public model name (a model group when several deployments share it).
    Model,
}

/// One callable target.
#[derive(Debug)]
pub struct Entry {
    /// Callable key.
    pub key: Arc<str>,
    /// Kind of target.
    pub kind: TargetKind,
    /// Members in registry order (failover order after the primary).
    pub members: Vec<Member<ResolvedDeployment>>,
}

impl Entry {
    /// Workload mode of the target (its first member's).
    pub fn mode(&self) -> Mode {
        self.members.first().map_or(Mode::Chat, |m| m.target.mode)
    }
}

/// The immutable registry snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    /// Callable key → entry.
    pub entries: HashMap<Arc<str>, Arc<Entry>>,
    /// Deployment id → resolved deployment (including ones without a connection).
    pub deployments: HashMap<Arc<str>, Arc<ResolvedDeployment>>,
    /// Sorted callable keys (for `/v1/models`).
    pub sorted_keys: Vec<Arc<str>>,
    /// When this snapshot was built (unix seconds).
    pub built_at: i64,
}

impl Registry {
    /// Live state of a deployment, if known.
    pub fn state_of(&self, deployment_id: &str) -> Option<&Arc<DeploymentState>> {
        self.deployments.get(deployment_id).map(|d| &d.state)
    }
}

/// DEP-9 runtime fills, never persisted: an `openai` deployment without a key
/// gets the global OpenAI key; a missing base URL gets the provider preset, or
/// the global OpenAI base URL for OpenAI-compatible providers without one.
/// The global key is deliberately not handed to other providers' hosts.
fn apply_runtime_defaults(provider_key: &str, params: &mut Map<String, Value>, settings: &GatewaySettings) {
    if str_field(params, "api_key").is_none()
        && provider::canonical(provider_key) == "openai"
        && let Some(key) = &settings.openai_api_key
    {
        params.insert("api_key".into(), Value::String(key.expose().to_owned()));
    }
    if str_field(params, "api_base").is_none() {
        let preset = provider::lookup(provider_key).and_then(|p| p.api_base).filter(|b| !b.contains('{'));
        let base = match preset {
            Some(b) => b.to_owned(),
            None => settings.openai_base_url.clone(),
        };
        params.insert("api_base".into(), Value::String(base));
    }
}

/// Build a registry from stored records. `previous` donates live state by id.
pub fn build(
    deployments: Vec<Deployment>,
    credentials: &[NamedCredential],
    settings: &GatewaySettings,
    previous: Option<&Registry>,
) -> Registry {
    let creds: HashMap<&str, &NamedCredential> = credentials.iter().map(|c| (c.credential_id.as_str(), c)).collect();
    let mut registry = Registry { built_at: chrono::Utc::now().timestamp(), ..Default::default() };
    let mut order: Vec<Arc<str>> = Vec::new();
    let mut members: HashMap<Arc<str>, Vec<Member<ResolvedDeployment>>> = HashMap::new();

    for record in deployments {
        let id: Arc<str> = Arc::from(record.deployment_id.as_str());
        let state = previous.and_then(|p| p.state_of(&id).cloned()).unwrap_or_else(|| Arc::new(DeploymentState::new()));
        let provider_key = record.provider();
        let credential = record.named_credential_id.as_deref().and_then(|cid| creds.get(cid).copied());
        let mut params = effective_params(&record.deltallm_params, credential.map(|c| &c.connection_config));
        apply_runtime_defaults(&provider_key, &mut params, settings);
        let default_params = match record.model_info.get("default_params") {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let (connection, connection_error) = if record.named_credential_id.is_some() && credential.is_none() {
            (None, Some("linked named credential does not exist".to_owned()))
        } else {
            match Connection::build(&provider_key, &params, default_params) {
                Ok(c) => (Some(c), None),
                Err(e) => {
                    tracing::warn!(deployment_id = %id, error = %e, "deployment left out of routing");
                    (None, Some(e.to_string()))
                }
            }
        };
        let pricing = Pricing::from_model_info(&record.model_info);
        let resolved = Arc::new(ResolvedDeployment {
            mode: record.mode(),
            provider: provider_key,
            credential_name: credential.map(|c| c.name.clone()),
            effective_params: params,
            connection,
            connection_error,
            pricing,
            state: state.clone(),
            record,
        });
        registry.deployments.insert(id.clone(), resolved.clone());
        if resolved.connection.is_none() {
            continue;
        }
        let key: Arc<str> = Arc::from(resolved.record.model_name.as_str());
        let meta = RouteMeta::from_deployment(&resolved.record, resolved.pricing.unit_cost());
        let list = members.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Vec::new()
        });
        list.push(Member { meta, state, target: resolved });
    }
    for key in order {
        let list = members.remove(&key).unwrap_or_default();
        registry.entries.insert(key.clone(), Arc::new(Entry { key, kind: TargetKind::Model, members: list }));
    }
    let mut keys: Vec<Arc<str>> = registry.entries.keys().cloned().collect();
    keys.sort();
    registry.sorted_keys = keys;
    registry
}
