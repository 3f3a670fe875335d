//! The gateway handle: registry snapshots, reloads, start-up.

use std::sync::Arc;

use arc_swap::ArcSwap;
use deltallm_domain::credential::NamedCredential;
use deltallm_domain::deployment::{self, Deployment, WriteRules};
use deltallm_providers::{HttpSettings, Providers};
use deltallm_router::CooldownPolicy;
use deltallm_storage::{RouteGroupSnapshot, Store};

use crate::registry::{self, Registry};
use crate::settings::{DeploymentSource, GatewaySettings};
use crate::spend::SpendQueue;
use crate::{Error, Result};

/// Cheap-to-clone handle to one running gateway.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) settings: GatewaySettings,
    pub(crate) registry: ArcSwap<Registry>,
    pub(crate) providers: Providers,
    pub(crate) spend: SpendQueue,
    pub(crate) cooldown: CooldownPolicy,
    /// Serializes admin writes and registry rebuilds (never taken by requests).
    pub(crate) write_lock: tokio::sync::Mutex<()>,
    /// Latest failover steps (RUN-10, `/health/fallback-events`).
    pub(crate) fallback_events: crate::health::FallbackEvents,
    /// `router_settings.route_groups`, served while the database has none.
    pub(crate) config_route_groups: RouteGroupSnapshot,
    /// Database fingerprint read just before the current registry was built
    /// (only kept while change polling is on).
    pub(crate) built_fingerprint: arc_swap::ArcSwapOption<String>,
}

/// Turn config `model_list` entries into records, validated with the same
/// rules as the admin API (config may infer provider and omit api_base).
/// Entries may link a stored named credential by `named_credential_id`.
fn config_deployments(settings: &GatewaySettings, credentials: &[NamedCredential]) -> Result<Vec<Deployment>, String> {
    let now = chrono::Utc::now();
    let mut out = Vec::with_capacity(settings.config_model_list.len());
    for (index, input) in settings.config_model_list.iter().enumerate() {
        let name = input.model_name.clone();
        let linked = input
            .named_credential_id
            .as_deref()
            .and_then(|id| credentials.iter().find(|c| c.credential_id == id).map(NamedCredential::as_link));
        let valid = deployment::validate(input.clone(), linked, WriteRules::CONFIG).map_err(|e| {
            match (&input.named_credential_id, linked) {
                (Some(id), None) => format!("model_list[{index}] ({name}): named credential '{id}' does not exist"),
                _ => format!("model_list[{index}] ({name}): {e}"),
            }
        })?;
        let input = valid.input;
        let earlier = out.iter().filter(|d: &&Deployment| d.model_name == input.model_name);
        deployment::check_shared_mode(
            &input.model_name,
            valid.mode,
            earlier.map(|d| (d.deployment_id.as_str(), d.mode())),
        )
        .map_err(|e| format!("model_list[{index}] ({name}): {e}"))?;
        out.push(Deployment {
            deployment_id: input.deployment_id.unwrap_or_else(|| format!("{}-{index}", input.model_name)),
            model_name: input.model_name,
            named_credential_id: input.named_credential_id,
            deltallm_params: input.deltallm_params,
            model_info: input.model_info,
            created_at: now + chrono::Duration::milliseconds(index as i64),
            updated_at: now,
        });
    }
    Ok(out)
}

/// CFG-5 `router_settings.route_groups`, validated like admin writes (ADM-6).
/// They are served only while the database holds no route groups.
fn config_route_groups(settings: &GatewaySettings) -> Result<RouteGroupSnapshot, String> {
    let mut snapshot = RouteGroupSnapshot::default();
    let now = chrono::Utc::now();
    for (index, value) in settings.router.route_groups.iter().enumerate() {
        let input = deltallm_domain::route_group::RouteGroupInput::from_create(value, now)
            .map_err(|e| format!("router_settings.route_groups[{index}]: {e}"))?;
        let key = input.group.group_key.clone();
        if snapshot.groups.iter().any(|g| g.group_key == key) {
            return Err(format!("router_settings.route_groups[{index}]: group_key '{key}' appears twice"));
        }
        snapshot.members.extend(input.members.into_iter().map(|m| m.merge(&key, None)));
        snapshot.groups.push(input.group);
    }
    Ok(snapshot)
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid configuration (message names the entry).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Stored secrets cannot be opened with the configured salt key.
    #[error("{0}")]
    Keys(String),
    /// The database failed.
    #[error("database error: {0}")]
    Storage(#[from] deltallm_storage::Error),
    /// The upstream client could not be created.
    #[error("upstream client: {0}")]
    Client(String),
}

impl Gateway {
    /// Start: check keys, bootstrap config deployments (CFG-4), build the first
    /// registry, start the spend writer. Must run inside a tokio runtime.
    pub async fn start(store: Store, settings: GatewaySettings) -> Result<Self, StartError> {
        let unreadable = store.unreadable_secrets().await?;
        if !unreadable.is_empty() {
            let detail: Vec<String> = unreadable
                .iter()
                .map(|u| {
                    format!("key id '{}' ({} record{})", u.key_id, u.records, if u.records == 1 { "" } else { "s" })
                })
                .collect();
            return Err(StartError::Keys(format!(
                "stored secrets were encrypted with a salt key that is not configured: {}; the configured key id is '{}'. Set DELTALLM_SALT_KEY to the key that encrypted them (or add it to DELTALLM_PREVIOUS_SALT_KEYS while rotating)",
                detail.join(", "),
                store.key_ring().current_id()
            )));
        }
        let credentials = store.all_credentials().await?;
        let from_config = config_deployments(&settings, &credentials).map_err(StartError::Config)?;
        let config_groups = config_route_groups(&settings).map_err(StartError::Config)?;
        if settings.deployment_source != DeploymentSource::ConfigOnly
            && settings.bootstrap_from_config
            && !from_config.is_empty()
        {
            match store.count_deployments().await {
                Ok(0) => {
                    let n = store.insert_missing_deployments(&from_config).await?;
                    tracing::info!(inserted = n, "bootstrapped deployments from config model_list");
                }
                Ok(_) => {}
                Err(e) if settings.deployment_source == DeploymentSource::Hybrid => {
                    tracing::warn!(error = %e, "database unavailable for bootstrap; using config deployments");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // CFG-4: db_only serves the database alone, so an empty one is a misconfiguration.
        if settings.deployment_source == DeploymentSource::DbOnly && store.count_deployments().await? == 0 {
            return Err(StartError::Config(
                "model_deployment_source is db_only but the database holds no deployments; bootstrap them from model_list or start with hybrid"
                    .into(),
            ));
        }
        let providers = Providers::new(&HttpSettings {
            connect_timeout: settings.upstream_connect_timeout,
            read_timeout: settings.upstream_read_timeout,
            pool_max_idle_per_host: settings.upstream_pool_max_idle_per_host,
            extra_root_certs_pem: settings.upstream_extra_root_certs_pem.clone(),
            ..HttpSettings::default()
        })
        .map_err(|e| StartError::Client(e.to_string()))?;
        let spend = SpendQueue::start(store.clone(), settings.spend_queue_capacity);
        let cooldown = CooldownPolicy::from_settings(&settings.router);
        let fallback_events = crate::health::FallbackEvents::new(settings.failover_event_history_size);
        let gateway = Gateway {
            inner: Arc::new(Inner {
                store,
                settings,
                registry: ArcSwap::from_pointee(Registry::default()),
                providers,
                spend,
                cooldown,
                write_lock: tokio::sync::Mutex::new(()),
                fallback_events,
                config_route_groups: config_groups,
                built_fingerprint: arc_swap::ArcSwapOption::empty(),
            }),
        };
        gateway.rebuild_registry().await?;
        if let Some(interval) = gateway.inner.settings.registry_polling() {
            spawn_registry_poll(Arc::downgrade(&gateway.inner), interval);
        }
        if gateway.inner.settings.background_health_checks {
            crate::health::spawn_background_checks(
                Arc::downgrade(&gateway.inner),
                gateway.inner.settings.health_check_interval,
            );
        }
        Ok(gateway)
    }

    /// The current registry snapshot. Load once per request and keep it.
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.load_full()
    }

    /// Settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// The store (admin services, embedders).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The shared upstream client.
    pub fn providers(&self) -> &Providers {
        &self.inner.providers
    }

    /// Spend records dropped because the queue was full.
    pub fn spend_dropped(&self) -> u64 {
        self.inner.spend.dropped()
    }

    /// Spend records lost because the database refused their batch.
    pub fn spend_failed(&self) -> u64 {
        self.inner.spend.failed()
    }

    /// Wait until queued spend records are written (shutdown, tests).
    pub async fn flush_spend(&self) {
        self.inner.spend.flush().await;
    }

    /// Reload deployments and credentials from the source and publish a new
    /// snapshot. In-flight requests keep the snapshot they loaded.
    pub async fn rebuild_registry(&self) -> Result<(), deltallm_storage::Error> {
        let inner = &self.inner;
        // Read before the data: a write landing after this read changes the
        // fingerprint again, so the poll rebuilds once more rather than miss it.
        let fingerprint = match inner.settings.registry_polling() {
            Some(_) => inner.store.registry_fingerprint().await.ok(),
            None => None,
        };
        let credentials = inner.store.all_credentials().await?;
        let from_config = || config_deployments(&inner.settings, &credentials).unwrap_or_default();
        let deployments = match inner.settings.deployment_source {
            DeploymentSource::ConfigOnly => from_config(),
            DeploymentSource::DbOnly => inner.store.all_deployments().await?,
            DeploymentSource::Hybrid => match inner.store.all_deployments().await {
                Ok(rows) if !rows.is_empty() => rows,
                Ok(_) => from_config(),
                Err(e) => {
                    tracing::warn!(error = %e, "database unavailable; serving config deployments");
                    from_config()
                }
            },
        };
        let stored_groups = match inner.settings.deployment_source {
            DeploymentSource::ConfigOnly => Default::default(),
            DeploymentSource::DbOnly => inner.store.route_group_snapshot().await?,
            DeploymentSource::Hybrid => inner.store.route_group_snapshot().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "route groups unavailable; serving config route groups");
                Default::default()
            }),
        };
        // CFG-5: config route groups stand in only while the database has none.
        let route_groups = if stored_groups.groups.is_empty() { &inner.config_route_groups } else { &stored_groups };
        let previous = inner.registry.load();
        let next = registry::build_with_route_groups(
            deployments,
            &credentials,
            route_groups,
            &inner.settings,
            Some(&previous),
        );
        tracing::info!(targets = next.entries.len(), deployments = next.deployments.len(), "registry rebuilt");
        inner.registry.store(Arc::new(next));
        inner.built_fingerprint.store(fingerprint.map(Arc::new));
        Ok(())
    }

    /// Rebuild the registry, serialized with admin writes so an older
    /// snapshot never replaces a newer one (background reloads, embedders).
    pub async fn reload(&self) -> Result<(), deltallm_storage::Error> {
        let _guard = self.inner.write_lock.lock().await;
        self.rebuild_registry().await
    }

    /// Check the master key (constant time). `Err` carries the API error.
    pub fn check_master_key(&self, presented: Option<&str>) -> Result<()> {
        use deltallm_domain::ApiErrorKind;
        let Some(presented) = presented.filter(|p| !p.is_empty()) else {
            return Err(Error::new(ApiErrorKind::Authentication, "Authentication required"));
        };
        let Some(master) = &self.inner.settings.master_key else {
            return Err(Error::new(ApiErrorKind::ServiceUnavailable, "No master key is configured"));
        };
        if deltallm_secrets::constant_time_eq(presented, master.expose()) {
            Ok(())
        } else {
            Err(Error::new(ApiErrorKind::Authentication, "Invalid master key"))
        }
    }
}

/// CFG-6 change propagation between replicas: every `interval`, compare the
/// database's registry fingerprint with the one the current registry was
/// built from and rebuild when another replica (or process) wrote. Writes on
/// this replica rebuild at once; the poll only costs one small aggregate
/// query per table.
///
/// Comparing with the last *polled* value instead would miss changes: a
/// create here followed by a delete elsewhere between two polls leaves the
/// database fingerprint where the poll last saw it, while this replica's
/// registry (rebuilt after its own create) still holds the deployment.
fn spawn_registry_poll(inner: std::sync::Weak<Inner>, interval: std::time::Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // immediate; the registry was just built
        loop {
            ticker.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let gateway = Gateway { inner };
            let now = match gateway.inner.store.registry_fingerprint().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "registry change poll failed; will retry");
                    continue;
                }
            };
            if gateway.inner.built_fingerprint.load().as_deref().map(String::as_str) == Some(now.as_str()) {
                continue;
            }
            match gateway.reload().await {
                Ok(()) => tracing::info!("registry reloaded after a change made elsewhere"),
                Err(e) => tracing::warn!(error = %e, "registry reload after a change made elsewhere failed"),
            }
        }
    });
}
