//! The immutable runtime registry (RUN-1): callable key → ordered deployments,
//! with credentials resolved, connections precomputed and live state attached.
//! Rebuilt off the request path on every write and published with one atomic
//! store; requests load a snapshot once and never touch the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deltallm_domain::credential::NamedCredential;
use deltallm_domain::deployment::{Deployment, Mode, effective_params};
use deltallm_domain::params::str_field;
use deltallm_domain::policy::{Policy, default_pool};
use deltallm_domain::provider;
use deltallm_providers::Connection;
use deltallm_router::{DeploymentState, Member, RouteMeta, Strategy, parse_strategy_or_default};
use deltallm_storage::RouteGroupSnapshot;
use serde_json::{Map, Value};

use crate::pricing::Pricing;
use crate::settings::GatewaySettings;

/// One deployment as the runtime sees it.
#[derive(Debug)]
pub struct ResolvedDeployment {
    /// Stored record (secrets in memory only).
    pub record: Deployment,
    /// `record.deployment_id`, shared with per-request records.
    pub id: Arc<str>,
    /// Credential-merged, DEP-9-filled params (what is actually used).
    pub effective_params: Map<String, Value>,
    /// RUN-3 provider.
    pub provider: Arc<str>,
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
    /// A route group (ADM-6) with its own members and policy.
    RouteGroup,
}

impl TargetKind {
    /// Wire name (`model`, `route_group`).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Model => "model",
            TargetKind::RouteGroup => "route_group",
        }
    }
}

/// How requests to one entry are routed: the policy (ADM-7) resolved at
/// build time, so requests read plain fields.
#[derive(Debug, Clone, Default)]
pub struct EntryRouting {
    /// RUN-8 strategy: policy ?? group `routing_strategy` ?? global.
    pub strategy: Strategy,
    /// Retries per deployment (`retry.max_attempts`); `None` = `num_retries`.
    pub num_retries: Option<u32>,
    /// Per-attempt deadline (`timeouts`); `None` = router `timeout`.
    pub attempt_timeout: Option<Duration>,
    /// `retry.retryable_error_classes` as a `RetryClass` bit set; `None` = RUN-11 defaults.
    pub retryable_mask: Option<u8>,
    /// Published policy version in force.
    pub policy_version: Option<u32>,
}

/// One callable target.
#[derive(Debug)]
pub struct Entry {
    /// Callable key.
    pub key: Arc<str>,
    /// Kind of target.
    pub kind: TargetKind,
    /// Workload mode (a model's first deployment's; a route group's own).
    pub mode: Mode,
    /// Members in registry order (failover order after the primary).
    pub members: Vec<Member<ResolvedDeployment>>,
    /// Strategy, retries and timeouts.
    pub routing: EntryRouting,
    /// Per member (same order): the spend metadata of a request it serves
    /// as the first pick on the first attempt, the usual case.
    first_try_metadata: Vec<Arc<str>>,
}

impl Entry {
    fn new(
        key: Arc<str>,
        kind: TargetKind,
        mode: Mode,
        members: Vec<Member<ResolvedDeployment>>,
        routing: EntryRouting,
    ) -> Self {
        let first_try_metadata = members
            .iter()
            .map(|m| {
                let id = &m.meta.deployment_id;
                let decision = crate::proxy::RouteDecision {
                    group: key.clone(),
                    strategy: routing.strategy,
                    selected: id.clone(),
                    served: id.clone(),
                    fallback_used: false,
                    attempts: 1,
                    policy_version: routing.policy_version,
                    spend_metadata: crate::spend::empty_metadata(),
                };
                Arc::from(crate::spend::route_metadata(&decision))
            })
            .collect();
        Self { key, kind, mode, members, routing, first_try_metadata }
    }

    /// The precomputed first-try spend metadata of the member `deployment_id`
    /// (the member's own id, compared by identity), if it is one of this entry's.
    pub(crate) fn first_try_metadata(&self, deployment_id: &Arc<str>) -> Option<Arc<str>> {
        let i = self.members.iter().position(|m| Arc::ptr_eq(&m.meta.deployment_id, deployment_id))?;
        self.first_try_metadata.get(i).cloned()
    }

    /// Workload mode of the target.
    pub fn mode(&self) -> Mode {
        self.mode
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
    /// DEP-3 warnings: public names whose deployments carry differing
    /// `access_groups` (shown in the admin list).
    pub access_group_warnings: HashMap<Arc<str>, String>,
}

impl Registry {
    /// Live state of a deployment, if known.
    pub fn state_of(&self, deployment_id: &str) -> Option<&Arc<DeploymentState>> {
        self.deployments.get(deployment_id).map(|d| &d.state)
    }
}

/// CRED-6/CFG-3: `os.environ/NAME` values (stored through the admin API or
/// in a credential) are resolved here, on every build; an unresolvable one
/// leaves its key absent, so e.g. a missing key reads as "missing", never as
/// the reference text sent upstream.
fn resolve_secret_refs(params: &mut Map<String, Value>, refs: &crate::settings::SecretRefs) {
    let resolved: Vec<(String, Option<String>)> =
        params.iter().filter_map(|(k, v)| Some((k.clone(), refs.resolve(v.as_str()?)?))).collect();
    for (key, value) in resolved {
        match value {
            Some(v) => params.insert(key, Value::String(v)),
            None => params.remove(&key),
        };
    }
}

/// DEP-9 runtime fills, never persisted: an `openai` deployment without a key
/// gets the global OpenAI key; a missing base URL gets the provider preset
/// (`openai`: the global OpenAI base URL). Providers without a preset (vllm,
/// lmstudio, ollama, azure's per-resource host, unknown) get no fill: their
/// own key must not be sent to api.openai.com, so such a deployment stays
/// uncallable with a clear "api_base is required" instead. The global key is
/// likewise never handed to other providers' hosts.
fn apply_runtime_defaults(provider_key: &str, params: &mut Map<String, Value>, settings: &GatewaySettings) {
    let is_openai = provider::canonical(provider_key) == "openai";
    if str_field(params, "api_key").is_none()
        && is_openai
        && let Some(key) = &settings.openai_api_key
    {
        params.insert("api_key".into(), Value::String(key.expose().to_owned()));
    }
    if str_field(params, "api_base").is_none() {
        let preset = provider::lookup(provider_key).and_then(|p| p.api_base).filter(|b| !b.contains('{'));
        let base = match preset {
            _ if is_openai => Some(settings.openai_base_url.clone()),
            Some(b) => Some(b.to_owned()),
            None => None,
        };
        if let Some(base) = base {
            params.insert("api_base".into(), Value::String(base));
        }
    }
}

/// DEP-3: every public name whose deployments disagree on `access_groups`.
fn access_group_warnings(registry: &Registry) -> HashMap<Arc<str>, String> {
    let mut by_name: HashMap<&str, Vec<(String, Vec<String>)>> = HashMap::new();
    for d in registry.deployments.values() {
        by_name
            .entry(d.record.model_name.as_str())
            .or_default()
            .push((d.record.deployment_id.clone(), d.record.access_groups()));
    }
    by_name
        .into_iter()
        .filter_map(|(name, mut lists)| {
            lists.sort();
            deltallm_domain::deployment::access_group_warning(name, &lists).map(|w| (Arc::from(name), w))
        })
        .collect()
}

/// Build a registry from stored records without route groups. `previous`
/// donates live state by id.
pub fn build(
    deployments: Vec<Deployment>,
    credentials: &[NamedCredential],
    settings: &GatewaySettings,
    previous: Option<&Registry>,
) -> Registry {
    build_with_route_groups(deployments, credentials, &RouteGroupSnapshot::default(), settings, previous)
}

/// Build a registry (RUN-1): one entry per `model_name`, then one per
/// enabled route group with at least one enabled, callable member.
/// `previous` donates live state by deployment id.
pub fn build_with_route_groups(
    deployments: Vec<Deployment>,
    credentials: &[NamedCredential],
    route_groups: &RouteGroupSnapshot,
    settings: &GatewaySettings,
    previous: Option<&Registry>,
) -> Registry {
    let global = EntryRouting {
        strategy: parse_strategy_or_default(Some(&settings.router.routing_strategy)),
        ..EntryRouting::default()
    };
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
        resolve_secret_refs(&mut params, &settings.secret_refs);
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
            id: id.clone(),
            provider: Arc::from(provider_key),
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
        let mode = list.first().map_or(Mode::Chat, |m| m.target.mode);
        let entry = Entry::new(key.clone(), TargetKind::Model, mode, list, global.clone());
        registry.entries.insert(key, Arc::new(entry));
    }
    add_route_groups(&mut registry, route_groups, &global);
    registry.access_group_warnings = access_group_warnings(&registry);
    let mut keys: Vec<Arc<str>> = registry.entries.keys().cloned().collect();
    keys.sort();
    registry.sorted_keys = keys;
    registry
}

/// RUN-1 route-group entries: enabled groups whose key is not a model name,
/// with their effective pool (published policy, else enabled members) reduced
/// to callable deployments of the group's mode. A group left without members
/// is not live.
fn add_route_groups(registry: &mut Registry, snapshot: &RouteGroupSnapshot, global: &EntryRouting) {
    let mut by_group: HashMap<&str, Vec<_>> = HashMap::new();
    for m in &snapshot.members {
        by_group.entry(m.group_key.as_str()).or_default().push(m.clone());
    }
    let published: HashMap<&str, _> = snapshot.published.iter().map(|p| (p.group_key.as_str(), p)).collect();
    for group in snapshot.groups.iter().filter(|g| g.enabled) {
        if registry.entries.contains_key(group.group_key.as_str()) {
            tracing::warn!(group_key = %group.group_key, "route group key equals a model name; the model wins");
            continue;
        }
        let group_members = by_group.remove(group.group_key.as_str()).unwrap_or_default();
        let policy = published.get(group.group_key.as_str()).and_then(|p| match Policy::parse(&p.policy) {
            Ok(policy) => Some((p.version, policy)),
            Err(e) => {
                tracing::warn!(group_key = %group.group_key, version = p.version, error = %e, "published policy ignored");
                None
            }
        });
        let pool = match &policy {
            Some((_, p)) => p.pool(&group_members),
            None => default_pool(&group_members),
        };
        let mut list = Vec::with_capacity(pool.len());
        for pm in pool {
            let Some(resolved) = registry.deployments.get(pm.deployment_id.as_str()) else { continue };
            if resolved.connection.is_none() {
                continue;
            }
            if resolved.mode != group.mode {
                tracing::warn!(group_key = %group.group_key, deployment_id = %pm.deployment_id, "member skipped: its mode differs from the group's");
                continue;
            }
            let mut meta = RouteMeta::from_deployment(&resolved.record, resolved.pricing.unit_cost());
            if let Some(w) = pm.weight {
                meta.weight = w;
            }
            if let Some(p) = pm.priority {
                meta.priority = p;
            }
            list.push(Member { meta, state: Arc::clone(&resolved.state), target: Arc::clone(resolved) });
        }
        if list.is_empty() {
            continue;
        }
        let strategy_name = policy.as_ref().and_then(|(_, p)| p.strategy_name()).or(group.routing_strategy.as_deref());
        let routing = EntryRouting {
            strategy: strategy_name.map_or(global.strategy, |n| parse_strategy_or_default(Some(n))),
            num_retries: policy.as_ref().and_then(|(_, p)| p.max_attempts()),
            attempt_timeout: policy.as_ref().and_then(|(_, p)| p.timeout()),
            retryable_mask: policy.as_ref().and_then(|(_, p)| p.retryable_mask()),
            policy_version: policy.as_ref().map(|(v, _)| *v),
        };
        let key: Arc<str> = Arc::from(group.group_key.as_str());
        let entry = Entry::new(key.clone(), TargetKind::RouteGroup, group.mode, list, routing);
        registry.entries.insert(key, Arc::new(entry));
    }
}
