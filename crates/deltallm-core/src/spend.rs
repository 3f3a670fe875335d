//! Spend events written off the request path: requests `try_send` into a
//! bounded queue; one writer task batches them into the database. A full
//! queue drops the record and counts it rather than slowing requests down.

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
}

impl SpendQueue {
    /// Start the writer task.
    pub fn start(store: Store, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(writer(store, rx));
        Self { tx, dropped: Arc::new(AtomicU64::new(0)) }
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

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until everything queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<SpendRecord>) {
    if batch.is_empty() {
        return;
    }
    let records = std::mem::replace(batch, Vec::with_capacity(BATCH));
    let n = records.len();
    if let Err(e) = store.insert_spend(records).await {
        tracing::error!(error = %e, records = n, "failed to write spend records");
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let msg = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    write(&store, &mut batch).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Record(r)) => {
                batch.push(*r);
                if batch.len() >= BATCH {
                    write(&store, &mut batch).await;
                }
            }
            Some(Msg::Flush(done)) => {
                write(&store, &mut batch).await;
                let _ = done.send(());
            }
            None => {
                write(&store, &mut batch).await;
                return;
            }
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
    request_tags: String,
    start_time: chrono::DateTime<chrono::Utc>,
}

impl SpendContext {
    /// Start collecting for one request.
    pub fn new(call_type: &'static str, model: &str, stream: bool, tags: &[&str]) -> Self {
        Self {
            // 128 random bits from the thread-local CSPRNG: unlike `Uuid::new_v4`
            // this costs no `getrandom` system call per request.
            request_id: format!("req_{:032x}", rand::random::<u128>()),
            call_type,
            model: Arc::from(model),
            stream,
            request_tags: serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()),
            start_time: chrono::Utc::now(),
        }
    }

    fn base(&self, started: std::time::Instant) -> SpendRecord {
        SpendRecord {
            request_id: self.request_id.clone(),
            call_type: self.call_type,
            model: self.model.clone(),
            provider: unknown_provider(),
            billing_unit: "token",
            request_tags: self.request_tags.clone(),
            metadata: "{}".into(),
            stream: self.stream,
            latency_ms: started.elapsed().as_millis() as i64,
            start_time: self.start_time,
            end_time: chrono::Utc::now(),
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
            metadata: route_metadata(route),
            status,
            http_status_code: http_status,
            error_type,
            ..self.base(started)
        }
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
            metadata: route.map(|r| route_metadata(r)).unwrap_or_else(|| "{}".into()),
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

/// The route decision as stored in `spend_logs.metadata`.
#[derive(serde::Serialize)]
struct RouteMetadata<'a> {
    route_group: &'a str,
    route_strategy: &'static str,
    selected_deployment: &'a str,
    served_deployment: &'a str,
    fallback_used: bool,
    attempts: u32,
    route_policy_version: Option<u32>,
}

fn route_metadata(route: &crate::proxy::RouteDecision) -> String {
    // Serialized straight from a struct: no intermediate `serde_json::Value` map per request.
    serde_json::to_string(&RouteMetadata {
        route_group: &route.group,
        route_strategy: route.strategy.as_str(),
        selected_deployment: &route.selected,
        served_deployment: &route.served,
        fallback_used: route.fallback_used,
        attempts: route.attempts,
        route_policy_version: route.policy_version,
    })
    .unwrap_or_else(|_| "{}".into())
}
