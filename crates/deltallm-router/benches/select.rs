//! Selection cost for one group of 1,000 members (target < 5 µs per pick).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use deltallm_router::{DeploymentState, Member, OwnedInFlightGuard, RouteMeta, Strategy, UnixMs, select};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: usize = 1_000;

fn group(now: UnixMs) -> (Vec<Member<()>>, Vec<OwnedInFlightGuard>) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut guards = Vec::new();
    let members = (0..GROUP)
        .map(|i| {
            let state = Arc::new(DeploymentState::new());
            for _ in 0..rng.random_range(0..8) {
                guards.push(state.begin_owned());
            }
            if i % 10 != 0 {
                // 10 % stay unsampled for latency routing.
                state.record_latency(Duration::from_millis(rng.random_range(20..2_000)), now);
            }
            if i % 4 != 0 {
                // Most deployments carry this minute's usage, so utilization is really computed.
                state.add_usage(rng.random_range(1..900), rng.random_range(100..90_000), now);
            }
            Member {
                meta: RouteMeta {
                    deployment_id: Arc::from(format!("dep-{i}")),
                    weight: rng.random_range(1..10),
                    priority: rng.random_range(0..4),
                    tags: Box::new([]),
                    unit_cost: Some(rng.random_range(0.1..1.0)),
                    rpm_limit: Some(1_000),
                    tpm_limit: if i % 2 == 0 { Some(100_000) } else { None },
                },
                state,
                target: Arc::new(()),
            }
        })
        .collect();
    (members, guards)
}

fn bench_select(c: &mut Criterion) {
    let now = UnixMs::now();
    let (members, _guards) = group(now);
    let mut rng = StdRng::seed_from_u64(1);
    for strategy in [
        Strategy::SimpleShuffle,
        Strategy::Weighted,
        Strategy::PriorityBased,
        Strategy::LeastBusy,
        Strategy::LatencyBased,
        Strategy::CostBased,
        Strategy::UsageBased,
        Strategy::RateLimitAware,
    ] {
        c.bench_function(&format!("select/{GROUP}/{strategy}"), |b| {
            b.iter(|| select(black_box(&members), strategy, &[], false, now, &mut rng))
        });
    }
    c.bench_function(&format!("select/{GROUP}/weighted+pre_call_checks"), |b| {
        b.iter(|| select(black_box(&members), Strategy::Weighted, &[], true, now, &mut rng))
    });
}

criterion_group!(benches, bench_select);
criterion_main!(benches);
