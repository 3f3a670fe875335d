//! Deployment health (RUN-19..22): the failover-event ring buffer, the
//! `/health/deployments` report, and background probes.
//!
//! Probes are `GET {api_base}/models` (or a credential check for Bedrock):
//! they never bill tokens. Background checks run on their own task with
//! bounded concurrency and never touch the request path except through the
//! deployments' atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
use deltallm_router::UnixMs;
use futures_util::StreamExt;
use serde::Serialize;

use crate::gateway::Inner;
use crate::registry::ResolvedDeployment;
use crate::{Error, Gateway, Result};

/// Deadline of one probe (RUN-21).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// Probes in flight at once during a background pass.
pub const PROBE_CONCURRENCY: usize = 8;
/// Most events `/health/fallback-events` returns.
pub const MAX_EVENTS_PER_PAGE: usize = 200;

/// One failover step (RUN-10).
#[derive(Debug, Clone, Serialize)]
pub struct FallbackEvent {
    /// Sequence number (monotonic per process).
    pub seq: u64,
    /// RFC 3339.
    pub at: DateTime<Utc>,
    /// Callable key the client asked for (after aliasing).
    pub group: String,
    /// Deployment that failed.
    pub from_deployment: String,
    /// Deployment tried next; null when nothing was left.
    pub to_deployment: Option<String>,
    /// `failover`, `context_window_fallback`, `content_policy_fallback` or `exhausted`.
    pub reason: &'static str,
    /// RUN-11 class label of the failure.
    pub error_class: &'static str,
    /// Upstream status, when one came back.
    pub status_code: Option<u16>,
    /// Client-safe message of the failure.
    pub error: String,
}

/// Lock-free ring of the latest failover events: a writer claims a slot
/// with one `fetch_add` and swaps an `Arc` in; readers copy the slots.
pub(crate) struct FallbackEvents {
    slots: Box<[ArcSwapOption<FallbackEvent>]>,
    next: AtomicU64,
}

impl FallbackEvents {
    pub(crate) fn new(capacity: usize) -> Self {
        let slots = (0..capacity.max(1)).map(|_| ArcSwapOption::const_empty()).collect();
        Self { slots, next: AtomicU64::new(0) }
    }

    pub(crate) fn push(&self, mut event: FallbackEvent) {
        let seq = self.next.fetch_add(1, Relaxed);
        event.seq = seq;
        let len = self.slots.len() as u64;
        self.slots[usize::try_from(seq % len).unwrap_or(0)].store(Some(Arc::new(event)));
    }

    /// Newest first, at most `limit`.
    pub(crate) fn recent(&self, limit: usize) -> Vec<Arc<FallbackEvent>> {
        let mut all: Vec<_> = self.slots.iter().filter_map(|s| s.load_full()).collect();
        all.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        all.truncate(limit);
        all
    }

    pub(crate) fn total(&self) -> u64 {
        self.next.load(Relaxed)
    }
}

/// `/health/fallback-events` body.
#[derive(Debug, Serialize)]
pub struct FallbackEventPage {
    /// Newest first.
    pub data: Vec<Arc<FallbackEvent>>,
    /// Events recorded since start (including ones the ring dropped).
    pub total_recorded: u64,
}

/// One row of `/health/deployments`.
#[derive(Debug, Serialize)]
pub struct DeploymentHealth {
    /// Id.
    pub deployment_id: String,
    /// Public name.
    pub model_name: String,
    /// RUN-3 provider.
    pub provider: String,
    /// RUN-20: flag not false, no cooldown, and callable.
    pub healthy: bool,
    /// Cooling down now.
    pub in_cooldown: bool,
    /// Cooldown end (unix seconds).
    pub cooldown_until: Option<u64>,
    /// Requests in flight.
    pub active_requests: u32,
    /// Failure streak.
    pub consecutive_failures: u32,
    /// Last failure, ≤ 200 chars.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
    /// RFC 3339.
    pub last_success_at: Option<String>,
    /// Time-decayed mean latency over the last 5 minutes.
    pub avg_latency_ms: Option<f64>,
    /// Why the runtime cannot call it, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_error: Option<String>,
}

/// `/health/deployments` body.
#[derive(Debug, Serialize)]
pub struct DeploymentHealthReport {
    /// `healthy` (all), `degraded` (some) or `unhealthy` (none of ≥ 1).
    pub status: &'static str,
    /// Deployments reported.
    pub total: usize,
    /// Healthy among them.
    pub healthy_count: usize,
    /// Per deployment.
    pub deployments: Vec<DeploymentHealth>,
}

fn row(d: &ResolvedDeployment, now: UnixMs) -> DeploymentHealth {
    let snap = d.state.snapshot(now);
    DeploymentHealth {
        deployment_id: d.record.deployment_id.clone(),
        model_name: d.record.model_name.clone(),
        provider: d.provider.to_string(),
        healthy: snap.healthy && d.connection.is_some(),
        in_cooldown: snap.in_cooldown,
        cooldown_until: snap.cooldown_until,
        active_requests: snap.in_flight,
        consecutive_failures: snap.consecutive_failures,
        last_error: snap.last_error,
        last_error_at: snap.last_error_at,
        last_success_at: snap.last_success_at,
        avg_latency_ms: snap.avg_latency_ms,
        routing_error: d.connection_error.clone(),
    }
}

/// Outcome of one probe, applied to the deployment's state.
pub(crate) struct ProbeOutcome {
    pub(crate) healthy: bool,
    pub(crate) message: String,
    pub(crate) status_code: Option<u16>,
}

impl Gateway {
    /// RUN-19 `/health/deployments`: every deployment, or those behind one
    /// callable key (model name or route group).
    pub fn deployment_health(&self, model: Option<&str>) -> Result<DeploymentHealthReport> {
        let registry = self.registry();
        let now = UnixMs::now();
        let mut rows: Vec<DeploymentHealth> = match model.map(str::trim).filter(|m| !m.is_empty()) {
            Some(key) => {
                let group = self.settings().router.model_group_alias.get(key).map_or(key, String::as_str);
                match registry.entries.get(group) {
                    Some(entry) => entry.members.iter().map(|m| row(&m.target, now)).collect(),
                    None => {
                        // A model whose deployments all lack a connection has no entry but still has health.
                        let rows: Vec<_> = registry
                            .deployments
                            .values()
                            .filter(|d| d.record.model_name == group)
                            .map(|d| row(d, now))
                            .collect();
                        if rows.is_empty() {
                            return Err(Error::not_found(format!("Model '{key}' is not configured")));
                        }
                        rows
                    }
                }
            }
            None => registry.deployments.values().map(|d| row(d, now)).collect(),
        };
        rows.sort_by(|a, b| (&a.model_name, &a.deployment_id).cmp(&(&b.model_name, &b.deployment_id)));
        let healthy_count = rows.iter().filter(|r| r.healthy).count();
        let status = match (rows.len(), healthy_count) {
            (n, h) if h == n => "healthy",
            (_, 0) => "unhealthy",
            _ => "degraded",
        };
        Ok(DeploymentHealthReport { status, total: rows.len(), healthy_count, deployments: rows })
    }

    /// RUN-19 `/health/fallback-events`: newest first, `limit` capped at 200.
    pub fn fallback_events(&self, limit: usize) -> FallbackEventPage {
        let events = &self.inner.fallback_events;
        FallbackEventPage { data: events.recent(limit.min(MAX_EVENTS_PER_PAGE)), total_recorded: events.total() }
    }

    pub(crate) fn record_fallback(&self, event: FallbackEvent) {
        tracing::info!(group = %event.group, from = %event.from_deployment, to = ?event.to_deployment, reason = event.reason, class = event.error_class, "failover");
        self.inner.fallback_events.push(event);
    }

    /// Probe one deployment (RUN-22). `background` applies RUN-21: a failure
    /// that is not health-affecting (e.g. 401 on `/models`) leaves health alone.
    pub(crate) async fn probe_deployment(&self, d: &ResolvedDeployment, background: bool) -> ProbeOutcome {
        let now = || UnixMs::now();
        let Some(conn) = &d.connection else {
            let message = d.connection_error.clone().unwrap_or_else(|| "deployment cannot be called".into());
            if !background {
                d.state.mark_probe(false, Some(&message), &self.inner.cooldown, now());
            }
            return ProbeOutcome { healthy: false, message, status_code: None };
        };
        match self.providers().probe(conn, PROBE_DEADLINE).await {
            Ok(p) => {
                d.state.mark_probe(true, None, &self.inner.cooldown, now());
                ProbeOutcome { healthy: true, message: p.message, status_code: p.status }
            }
            Err(e) => {
                let e = conn.scrub(e);
                let message = e.client_message();
                if !background || e.health_affecting() {
                    d.state.mark_probe(false, Some(&message), &self.inner.cooldown, now());
                }
                ProbeOutcome { healthy: false, message, status_code: e.status }
            }
        }
    }

    /// One background pass (RUN-21) over every callable deployment, at most
    /// [`PROBE_CONCURRENCY`] probes at a time. Returns how many were probed.
    pub async fn run_health_checks(&self) -> usize {
        let registry = self.registry();
        let targets: Vec<_> = registry.deployments.values().filter(|d| d.connection.is_some()).cloned().collect();
        let n = targets.len();
        futures_util::stream::iter(targets)
            .for_each_concurrent(PROBE_CONCURRENCY, |d| async move {
                let outcome = self.probe_deployment(&d, true).await;
                if !outcome.healthy {
                    tracing::warn!(deployment_id = %d.record.deployment_id, status = ?outcome.status_code, message = %outcome.message, "background health check failed");
                }
            })
            .await;
        n
    }
}

/// Run [`Gateway::run_health_checks`] every `interval` until the gateway is dropped.
pub(crate) fn spawn_background_checks(inner: Weak<Inner>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; the registry was just built
        loop {
            ticker.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let gateway = Gateway { inner };
            let probed = gateway.run_health_checks().await;
            tracing::debug!(probed, "background health checks done");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(group: &str) -> FallbackEvent {
        FallbackEvent {
            seq: 0,
            at: Utc::now(),
            group: group.into(),
            from_deployment: "a".into(),
            to_deployment: Some("b".into()),
            reason: "failover",
            error_class: "upstream_5xx",
            status_code: Some(500),
            error: "Provider error: 500".into(),
        }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let ring = FallbackEvents::new(3);
        assert!(ring.recent(10).is_empty());
        for i in 0..5 {
            ring.push(event(&format!("g{i}")));
        }
        let got: Vec<_> = ring.recent(10).iter().map(|e| e.group.clone()).collect();
        assert_eq!(got, ["g4", "g3", "g2"]);
        assert_eq!(ring.recent(1)[0].seq, 4);
        assert_eq!(ring.total(), 5);
    }

    #[test]
    fn ring_under_concurrent_writers() {
        let ring = Arc::new(FallbackEvents::new(64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || (0..1000).for_each(|_| ring.push(event("g"))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let recent = ring.recent(200);
        assert_eq!(recent.len(), 64);
        assert_eq!(ring.total(), 4000);
        assert!(recent.windows(2).all(|w| w[0].seq > w[1].seq));
    }
}
