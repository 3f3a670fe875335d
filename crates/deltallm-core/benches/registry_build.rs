//! Registry rebuild cost for 10,000 deployments (target ≤ 100 ms), and the
//! request-side snapshot load + selection while rebuilds are published
//! concurrently (requests never wait for a rebuild).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use deltallm_core::GatewaySettings;
use deltallm_core::registry::{self, Registry};
use deltallm_domain::deployment::Deployment;
use deltallm_router::{Strategy, UnixMs, select};
use serde_json::{Map, Value, json};

const DEPLOYMENTS: usize = 10_000;
const GROUPS: usize = 100;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn deployments() -> Vec<Deployment> {
    (0..DEPLOYMENTS)
        .map(|i| Deployment {
            deployment_id: format!("dep-{i}"),
            model_name: format!("model-{}", i % GROUPS),
            named_credential_id: None,
            deltallm_params: obj(json!({
                "provider": if i % 3 == 0 { "openai" } else { "vllm" },
                "model": format!("org/model-{i}"),
                "api_base": format!("http://10.0.{}.{}:8000/v1", i / 250, i % 250),
                "api_key": format!("sk-{i:032}"),
                "weight": 1 + i % 5,
            })),
            model_info: obj(json!({
                "mode": "chat",
                "priority": i % 3,
                "tags": ["eu", "gpu"],
                "input_cost_per_token": 0.000001,
                "output_cost_per_token": 0.000002,
                "rpm_limit": 600,
            })),
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let settings = GatewaySettings::default();
    let records = deployments();
    let previous = registry::build(records.clone(), &[], &settings, None);
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.bench_function(format!("build/{DEPLOYMENTS}"), |b| {
        b.iter_batched(
            || records.clone(),
            |records| black_box(registry::build(records, &[], &settings, Some(&previous))),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// What a request does (one snapshot load, one selection) while another
/// thread keeps building and publishing 10,000-deployment registries.
fn bench_load_during_rebuilds(c: &mut Criterion) {
    let settings = GatewaySettings::default();
    let records = deployments();
    let swap = Arc::new(ArcSwap::from_pointee(registry::build(records.clone(), &[], &settings, None)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (swap, stop, settings) = (Arc::clone(&swap), Arc::clone(&stop), settings.clone());
        std::thread::spawn(move || {
            let mut rebuilds = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let previous: Arc<Registry> = swap.load_full();
                swap.store(Arc::new(registry::build(records.clone(), &[], &settings, Some(&previous))));
                rebuilds += 1;
            }
            rebuilds
        })
    };
    let mut rng = rand::rng();
    c.bench_function("request/load+select during rebuilds", |b| {
        b.iter(|| {
            let snapshot = swap.load_full();
            let entry = snapshot.entries.get("model-7").expect("entry");
            black_box(select(&entry.members, Strategy::SimpleShuffle, &[], false, UnixMs::now(), &mut rng))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let rebuilds = writer.join().unwrap_or(0);
    eprintln!("registry rebuilds published during the measurement: {rebuilds}");
}

criterion_group!(benches, bench_build, bench_load_during_rebuilds);
criterion_main!(benches);
