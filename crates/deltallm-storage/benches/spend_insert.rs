//! CPU cost of writing spend records to SQLite, per record, counted over all
//! threads of the process (the caller and the database thread). This is the
//! work the gateway's spend writer adds to every proxied request.
//!
//! `cargo bench -p deltallm-storage --bench spend_insert`
//! (`SPEND_BENCH_RECORDS`, default 200000; `SPEND_BENCH_BATCH`, default 256).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use deltallm_migration::{Migrator, MigratorTrait};
use deltallm_secrets::{Key, KeyRing};
use deltallm_storage::{SpendRecord, Store};

/// utime + stime of the whole process, in seconds (`/proc/self/stat`).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    (ticks(11) + ticks(12)) / 100.0
}

/// What the gateway shares across records: the registry's strings.
struct Shared {
    model: Arc<str>,
    deployment_id: Arc<str>,
    provider: Arc<str>,
    api_base: Arc<str>,
}

fn record(shared: &Shared, i: usize) -> SpendRecord {
    let now = Utc::now();
    SpendRecord {
        request_id: format!("req_{i:032x}"),
        call_type: "chat_completion",
        model: shared.model.clone(),
        deployment_id: Some(shared.deployment_id.clone()),
        deployment_model: Some(shared.model.clone()),
        provider: shared.provider.clone(),
        api_base: Some(shared.api_base.clone()),
        spend: 0.0,
        provider_cost: 0.0,
        billing_unit: "token",
        prompt_tokens: 12,
        completion_tokens: 14,
        total_tokens: 26,
        unpriced_reason: Some("no token prices configured for the deployment"),
        request_tags: "[]".into(),
        metadata: r#"{"route_group":"bench-json","route_strategy":"simple-shuffle","selected_deployment":"3f1c0a52-9b7e-4d2a-8c11-2a4b5c6d7e8f","served_deployment":"3f1c0a52-9b7e-4d2a-8c11-2a4b5c6d7e8f","fallback_used":false,"attempts":1,"route_policy_version":null}"#.into(),
        status: "success",
        http_status_code: 200,
        latency_ms: 1,
        start_time: now,
        end_time: now,
        ..SpendRecord::default()
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let total = env_usize("SPEND_BENCH_RECORDS", 200_000);
    let batch = env_usize("SPEND_BENCH_BATCH", 256).max(1);
    let dir = std::env::temp_dir().join(format!("deltallm-spend-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let shared = Shared {
        model: Arc::from("bench-json"),
        deployment_id: Arc::from("3f1c0a52-9b7e-4d2a-8c11-2a4b5c6d7e8f"),
        provider: Arc::from("vllm"),
        api_base: Arc::from("http://127.0.0.1:18801/v1"),
    };
    let record = |i| record(&shared, i);
    rt.block_on(async {
        let store = Store::connect(&url, KeyRing::new(Key::derive("spend-bench").expect("key"))).await.expect("connect");
        Migrator::up(store.connection(), None).await.expect("migrate");
        // Warm-up: statement caches, WAL file, first pages.
        store.insert_spend((0..batch).map(record).collect()).await.expect("warm-up");
        let records: Vec<Vec<SpendRecord>> =
            (0..total).map(record).collect::<Vec<_>>().chunks(batch).map(<[SpendRecord]>::to_vec).collect();
        let cpu0 = process_cpu_seconds();
        let t0 = Instant::now();
        for chunk in records {
            store.insert_spend(chunk).await.expect("insert");
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - cpu0;
        println!(
            "spend insert (SQLite, batches of {batch}): {total} records, {:.2} µs CPU per record, {:.2} µs wall per record, {:.0} records/s",
            cpu * 1e6 / total as f64,
            wall * 1e6 / total as f64,
            total as f64 / wall
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
