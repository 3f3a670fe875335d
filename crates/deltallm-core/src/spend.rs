//! Spend events written off the request path: requests `try_send` into a
//! bounded queue; one writer task batches them into the database. A full
//! queue drops the record and counts it rather than slowing requests down;
//! a batch the database refuses is logged and its records counted too, so
//! operators can see spend that was never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deltallm_storage::{SpendRecord, Store};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 256;
const LINGER: Duration = Duration::from_millis(200);

enum Msg {
    Record(Box<SpendRecord>),
    Flush(oneshot::Sender<()>),
}

/// Producer side of the spend queue.
pub struct SpendQueue {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl SpendQueue {
    /// Start the writer task.
    pub fn start(store: Store, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let failed = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(store, rx, failed.clone()));
        Self { tx, dropped: Arc::new(AtomicU64::new(0)), failed }
    }

    /// Queue a record without waiting.
    pub fn record(&self, record: SpendRecord) {
        if self.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped_total = n, "spend queue full; spend records dropped");
            }
        }
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records lost so far because the database refused their batch.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Wait until everything queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<SpendRecord>, failed: &AtomicU64) {
    if batch.is_empty() {
        return;
    }
    let records = std::mem::replace(batch, Vec::with_capacity(BATCH));
    let n = records.len();
    if let Err(e) = store.insert_spend(records).await {
        let total = failed.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        tracing::error!(error = %e, records = n, failed_total = total, "failed to write spend records");
    }
}

/// Drains the queue in batches. Everything already queued is taken in one
/// wake-up (`recv_many`), and a batch's linger is one deadline set when its
/// first record arrives, not a fresh timer per record.
async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>, failed: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut inbox = Vec::with_capacity(BATCH);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let room = BATCH.saturating_sub(batch.len()).max(1);
        let received = match deadline {
            None => rx.recv_many(&mut inbox, room).await,
            Some(at) => match tokio::time::timeout_at(at, rx.recv_many(&mut inbox, room)).await {
                Ok(n) => n,
                Err(_) => {
                    write(&store, &mut batch, &failed).await;
                    deadline = None;
                    continue;
                }
            },
        };
        if received == 0 {
            // Every sender is gone: the gateway is shutting down.
            write(&store, &mut batch, &failed).await;
            return;
        }
        for msg in inbox.drain(..) {
            match msg {
                Msg::Record(r) => {
                    batch.push(*r);
                    if batch.len() >= BATCH {
                        write(&store, &mut batch, &failed).await;
                        deadline = None;
                    }
                }
                Msg::Flush(done) => {
                    write(&store, &mut batch, &failed).await;
                    deadline = None;
                    let _ = done.send(());
                }
            }
        }
        if batch.is_empty() {
            deadline = None;
        } else if deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + LINGER);
        }
    }
}

/// Per-request facts collected before the response is known.
#[derive(Debug)]
pub struct SpendContext {
    /// Gateway request id.
    pub request_id: String,
    call_type: &'static str,
    model: Arc<str>,
    stream: bool,
    request_tags: std::borrow::Cow<'static, str>,
    start_time: chrono::DateTime<chrono::Utc>,
}

impl SpendContext {
    /// Start collecting for one request.
    pub fn new(call_type: &'static str, model: &str, stream: bool, tags: &[&str]) -> Self {
        Self {
            request_id: new_request_id(),
            call_type,
            model: Arc::from(model),
            stream,
            request_tags: if tags.is_empty() {
                "[]".into()
            } else {
                serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()).into()
            },
            start_time: chrono::Utc::now(),
        }
    }

    fn base(&self, started: std::time::Instant) -> SpendRecord {
        let elapsed = started.elapsed();
        SpendRecord {
            request_id: self.request_id.clone(),
            call_type: self.call_type,
            model: self.model.clone(),
            provider: unknown_provider(),
            billing_unit: "token",
            request_tags: self.request_tags.clone(),
            metadata: empty_metadata(),
            stream: self.stream,
            latency_ms: elapsed.as_millis() as i64,
            start_time: self.start_time,
            // From the same clock reading as the latency, so the two agree.
            end_time: self.start_time + chrono::TimeDelta::from_std(elapsed).unwrap_or_default(),
            ..SpendRecord::default()
        }
    }

    /// A served request (SPEND-1, SPEND-3, SPEND-4).
    pub fn success(
        &self,
        deployment: &crate::registry::ResolvedDeployment,
        endpoint: crate::proxy::Endpoint,
        units: &crate::pricing::Units,
        route: &crate::proxy::RouteDecision,
        started: std::time::Instant,
    ) -> SpendRecord {
        self.served(deployment, endpoint, units, route, started, "success", 200, None)
    }

    /// A served request with an explicit outcome (streams cut or abandoned).
    #[allow(clippy::too_many_arguments)]
    pub fn served(
        &self,
        deployment: &crate::registry::ResolvedDeployment,
        endpoint: crate::proxy::Endpoint,
        units: &crate::pricing::Units,
        route: &crate::proxy::RouteDecision,
        started: std::time::Instant,
        status: &'static str,
        http_status: i32,
        error_type: Option<&'static str>,
    ) -> SpendRecord {
        let cost = deployment.pricing.cost(endpoint.mode(), units);
        let conn = deployment.connection.as_ref();
        SpendRecord {
            deployment_id: Some(deployment.id.clone()),
            deployment_model: conn.map(|c| c.upstream_model_shared().clone()),
            provider: deployment.provider.clone(),
            api_base: conn.map(|c| c.api_base_shared().clone()),
            spend: cost.usd,
            provider_cost: cost.usd,
            billing_unit: cost.billing_unit,
            prompt_tokens: units.prompt_tokens as i64,
            completion_tokens: units.completion_tokens as i64,
            total_tokens: (units.prompt_tokens + units.completion_tokens) as i64,
            prompt_tokens_cached: units.prompt_tokens_cached as i64,
            images: units.images as i64,
            characters: units.characters as i64,
            audio_seconds: units.seconds,
            unpriced_reason: cost.unpriced_reason,
            metadata: route.spend_metadata.clone(),
            status,
            http_status_code: http_status,
            error_type,
            ..self.base(started)
        }
    }

    /// A request whose client left before it was answered (its connection
    /// closed while the upstream call ran): cost 0, and the call was
    /// cancelled, so no deployment is named.
    pub fn abandoned(&self, started: std::time::Instant) -> SpendRecord {
        SpendRecord { status: "client_disconnected", http_status_code: 499, ..self.base(started) }
    }

    /// A failed request: cost 0 (SPEND-3).
    pub fn failure(
        &self,
        error: &crate::proxy::ProxyError,
        provider: Option<Arc<str>>,
        started: std::time::Instant,
    ) -> SpendRecord {
        let route = error.route.as_ref();
        SpendRecord {
            deployment_id: route.map(|r| r.served.clone()),
            provider: provider.unwrap_or_else(unknown_provider),
            metadata: route.map_or_else(empty_metadata, |r| r.spend_metadata.clone()),
            status: "failure",
            http_status_code: i32::from(error.error.kind.status()),
            error_type: Some(error.error.kind.openai_type()),
            ..self.base(started)
        }
    }
}

/// Provider of a record that never reached a deployment (SPEND-4 has nothing to go on).
fn unknown_provider() -> Arc<str> {
    static UNKNOWN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// `{}`: the metadata of a record that never reached routing.
pub(crate) fn empty_metadata() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("{}"));
    EMPTY.clone()
}

/// The route decision as stored in `spend_logs.metadata`, written by hand
/// into one right-sized string (the serde serializer cost several times more
/// for the same bytes). The registry writes each entry's first-try decisions
/// once ([`crate::registry::Entry::first_try_metadata`]); only retries and
/// fallbacks write theirs per request.
pub(crate) fn route_metadata(route: &crate::proxy::RouteDecision) -> String {
    let mut out = String::with_capacity(192 + route.group.len() + route.selected.len() + route.served.len());
    out.push_str("{\"route_group\":");
    push_json_str(&mut out, &route.group);
    out.push_str(",\"route_strategy\":");
    push_json_str(&mut out, route.strategy.as_str());
    out.push_str(",\"selected_deployment\":");
    push_json_str(&mut out, &route.selected);
    out.push_str(",\"served_deployment\":");
    push_json_str(&mut out, &route.served);
    out.push_str(if route.fallback_used { ",\"fallback_used\":true" } else { ",\"fallback_used\":false" });
    out.push_str(",\"attempts\":");
    out.push_str(itoa::Buffer::new().format(route.attempts));
    out.push_str(",\"route_policy_version\":");
    match route.policy_version {
        Some(v) => out.push_str(itoa::Buffer::new().format(v)),
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

/// `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// `req_` and 128 random bits in hex, from the thread-local CSPRNG (unlike
/// `Uuid::new_v4`, no `getrandom` system call per request).
fn new_request_id() -> String {
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits, so this cannot fail.
    let _ = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut hex);
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    id.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::RouteDecision;
    use deltallm_router::Strategy;

    #[test]
    fn route_metadata_is_the_json_of_the_decision() {
        let mut route = RouteDecision {
            group: "gpt \"4\"".into(),
            strategy: Strategy::SimpleShuffle,
            selected: "dep-a".into(),
            served: "dep-b".into(),
            fallback_used: true,
            attempts: 2,
            policy_version: None,
            spend_metadata: empty_metadata(),
        };
        let v: serde_json::Value = serde_json::from_str(&route_metadata(&route)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "route_group": "gpt \"4\"", "route_strategy": "simple-shuffle", "selected_deployment": "dep-a",
                "served_deployment": "dep-b", "fallback_used": true, "attempts": 2, "route_policy_version": null
            })
        );
        route.policy_version = Some(7);
        route.fallback_used = false;
        let v: serde_json::Value = serde_json::from_str(&route_metadata(&route)).unwrap();
        assert_eq!((v["route_policy_version"].as_u64(), v["fallback_used"].as_bool()), (Some(7), Some(false)));
    }

    #[test]
    fn request_ids_are_36_hex_chars_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert!(a.starts_with("req_") && a.len() == 36, "{a}");
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
