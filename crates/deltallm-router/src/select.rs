//! Deployment selection within one routing-table entry (RUN-6, RUN-7, RUN-8)
//! and failover order (RUN-10).
//!
//! Selection is one pass over the members that allocates nothing and takes
//! no locks. Every strategy reduces to "among the admitted members with the
//! smallest key, pick one in proportion to weight". The pass tracks the
//! smallest key and a weighted reservoir of size one over the members that
//! hold it; a smaller key resets the reservoir. The reservoir draws random
//! numbers only when the pick changes (skip-ahead: after a pick at
//! cumulative weight `W`, the next change happens where the cumulative weight
//! first reaches `W/u`, `u ~ U(0,1]`), so about `ln n` draws per selection
//! instead of one per member. Since live state is read once per member, a
//! concurrent update cannot make the pick inconsistent.

use std::sync::Arc;

use deltallm_domain::deployment::Deployment;
use rand::Rng;

use crate::clock::UnixMs;
use crate::state::DeploymentState;
use crate::strategy::Strategy;

/// Utilization at or above which `rate-limit-aware` avoids a deployment.
pub const RATE_LIMIT_AWARE_THRESHOLD: f64 = 0.9;

/// Routing facts about one deployment, precomputed at registry build (DEP-7).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMeta {
    /// Deployment id.
    pub deployment_id: Arc<str>,
    /// Relative weight (DEP-7: ≥ 1 from the registry; 0 is tolerated).
    pub weight: u32,
    /// Priority bucket, lower preferred.
    pub priority: u32,
    /// Routing tags (`model_info.tags`).
    pub tags: Box<[Arc<str>]>,
    /// Cost of one unit of usage (SPEND-1), for `cost-based-routing`.
    pub unit_cost: Option<f64>,
    /// Requests per minute limit; `None` or 0 = unlimited.
    pub rpm_limit: Option<u64>,
    /// Tokens per minute limit; `None` or 0 = unlimited.
    pub tpm_limit: Option<u64>,
}

impl RouteMeta {
    /// DEP-7 derivation from a stored deployment. `unit_cost` comes from the
    /// pricing table, which this crate does not own.
    pub fn from_deployment(deployment: &Deployment, unit_cost: Option<f64>) -> Self {
        Self {
            deployment_id: Arc::from(deployment.deployment_id.as_str()),
            weight: deployment.weight(),
            priority: deployment.priority(),
            tags: deployment.tags().into_iter().map(Arc::from).collect(),
            unit_cost,
            rpm_limit: deployment.rpm_limit(),
            tpm_limit: deployment.tpm_limit(),
        }
    }

    /// RUN-6 tag filter: every non-empty request tag is one of this
    /// deployment's tags (exact match). Untagged deployments therefore fail
    /// as soon as one tag is requested.
    #[inline]
    pub fn has_all_tags(&self, request_tags: &[&str]) -> bool {
        request_tags.iter().filter(|t| !t.is_empty()).all(|t| self.tags.iter().any(|own| own.as_ref() == *t))
    }
}

/// One deployment of a routing-table entry, as the gateway core attaches it.
#[derive(Debug)]
pub struct Member<T> {
    /// Precomputed routing facts.
    pub meta: RouteMeta,
    /// Live state, shared across registry rebuilds.
    pub state: Arc<DeploymentState>,
    /// Whatever the core needs to call the deployment.
    pub target: Arc<T>,
}

impl<T> Clone for Member<T> {
    fn clone(&self) -> Self {
        Self { meta: self.meta.clone(), state: Arc::clone(&self.state), target: Arc::clone(&self.target) }
    }
}

/// RUN-7 utilization for the current UTC minute: `max(current / limit)`
/// over the set rpm and tpm limits; 0 without limits.
#[inline]
pub fn utilization(meta: &RouteMeta, state: &DeploymentState, now: UnixMs) -> f64 {
    utilization_in(meta, state, now.minute())
}

/// [`utilization`] for a precomputed minute. Reads only the counters whose
/// limit is set and avoids NaN-aware `max`: this runs once per member in
/// usage-based and rate-limit-aware selection.
#[inline]
fn utilization_in(meta: &RouteMeta, state: &DeploymentState, minute: u64) -> f64 {
    let mut u = 0.0;
    if let Some(limit) = meta.rpm_limit.filter(|&l| l > 0) {
        u = f64::from(state.requests_in(minute)) / limit_f64(limit);
    }
    if let Some(limit) = meta.tpm_limit.filter(|&l| l > 0) {
        let t = f64::from(state.tokens_in(minute)) / limit_f64(limit);
        if t > u {
            u = t;
        }
    }
    u
}

/// A limit as f64 through a signed conversion (one instruction on x86-64,
/// unlike u64 → f64); limits above `i64::MAX` are effectively unlimited.
#[inline]
fn limit_f64(limit: u64) -> f64 {
    // Exactness does not matter for a ratio used as a routing key.
    #[allow(clippy::cast_precision_loss)]
    i64::try_from(limit).map_or(f64::MAX, |l| l as f64)
}

/// RUN-6 selection over an entry's members. Drops unavailable members
/// (cooldown or failed probe), applies the tag filter (all non-empty
/// `request_tags` must be among the deployment's tags; untagged deployments
/// are excluded once a tag is requested), drops members at utilization ≥ 1
/// when `pre_call_checks` is on, then applies `strategy` (RUN-8).
///
/// Returns the index into `members` of the pick, or `None` when nothing is
/// selectable.
pub fn select<T, R: Rng + ?Sized>(
    members: &[Member<T>],
    strategy: Strategy,
    request_tags: &[&str],
    pre_call_checks: bool,
    now: UnixMs,
    rng: &mut R,
) -> Option<usize> {
    let minute = now.minute();
    let filter =
        Filter { tags: request_tags, tagged: request_tags.iter().any(|t| !t.is_empty()), pre_call_checks, now, minute };
    let weight = |m: &Member<T>| u64::from(m.meta.weight);
    match strategy {
        Strategy::SimpleShuffle => pick(members, &filter, |_| Some(()), |_| 1, rng),
        Strategy::Weighted | Strategy::TagBased => pick(members, &filter, |_| Some(()), weight, rng),
        Strategy::PriorityBased => pick(members, &filter, |m| Some(m.meta.priority), weight, rng),
        Strategy::LeastBusy => pick(members, &filter, |m| Some(m.state.in_flight()), weight, rng),
        // Unsampled members have no key and so join whatever tie set wins (EDGE-9).
        Strategy::LatencyBased => pick(members, &filter, |m| m.state.avg_latency_ms(now), weight, rng),
        Strategy::CostBased => pick(
            members,
            &filter,
            |m| Some(m.meta.unit_cost.filter(|c| !c.is_nan()).unwrap_or(f64::INFINITY)),
            weight,
            rng,
        ),
        Strategy::UsageBased => {
            pick(members, &filter, |m| Some(utilization_in(&m.meta, &m.state, minute)), weight, rng)
        }
        Strategy::RateLimitAware => pick_below_threshold(members, &filter, rng),
    }
}

/// `rate-limit-aware`: weighted among members below the utilization
/// threshold, else weighted over all. Two reservoirs filled in one pass, the
/// member's tier indexing the reservoir, so there is no data-dependent
/// "new best key" branch to mispredict.
#[inline]
fn pick_below_threshold<T, R: Rng + ?Sized>(members: &[Member<T>], filter: &Filter<'_>, rng: &mut R) -> Option<usize> {
    let mut tiers = [TieSet::EMPTY; 2];
    for (i, m) in members.iter().enumerate() {
        if !filter.admits(m) {
            continue;
        }
        let over = utilization_in(&m.meta, &m.state, filter.minute) >= RATE_LIMIT_AWARE_THRESHOLD;
        tiers[usize::from(over)].offer(i, u64::from(m.meta.weight), rng);
    }
    let below = tiers[0].finish();
    let above = tiers[1];
    if below.is_some() { below } else { above.finish() }
}

/// RUN-10 order within one entry: the primary, then every other member in
/// registry order. Availability is not re-checked here; callers skip
/// members whose `state.is_available(now)` is false when they reach them.
/// An out-of-range `primary` yields plain registry order.
pub fn failover_order<T>(members: &[Member<T>], primary: usize) -> impl Iterator<Item = usize> + use<T> {
    let n = members.len();
    let primary = (primary < n).then_some(primary);
    primary.into_iter().chain((0..n).filter(move |&i| Some(i) != primary))
}

/// The request-independent part of RUN-6 filtering.
struct Filter<'a> {
    tags: &'a [&'a str],
    tagged: bool,
    pre_call_checks: bool,
    now: UnixMs,
    minute: u64,
}

impl Filter<'_> {
    #[inline]
    fn admits<T>(&self, m: &Member<T>) -> bool {
        m.state.is_available(self.now)
            && (!self.tagged || m.meta.has_all_tags(self.tags))
            && (!self.pre_call_checks || utilization_in(&m.meta, &m.state, self.minute) < 1.0)
    }
}

/// Weighted pick among the admitted members with the smallest key. A member
/// whose key is `None` belongs to every tie set. If the tie set's weights
/// sum to 0 the pick is uniform.
#[inline]
fn pick<T, K, R>(
    members: &[Member<T>],
    filter: &Filter<'_>,
    key: impl Fn(&Member<T>) -> Option<K>,
    weight: impl Fn(&Member<T>) -> u64,
    rng: &mut R,
) -> Option<usize>
where
    K: PartialOrd + Copy,
    R: Rng + ?Sized,
{
    let mut best_key: Option<K> = None;
    let mut best = TieSet::EMPTY;
    let mut wild = TieSet::EMPTY;
    for (i, m) in members.iter().enumerate() {
        if !filter.admits(m) {
            continue;
        }
        let w = weight(m);
        match key(m) {
            None => wild.offer(i, w, rng),
            Some(k) => {
                let joins = match best_key {
                    Some(b) if k == b => true,
                    // Larger or incomparable (NaN) keys lose.
                    Some(b) if k.partial_cmp(&b) != Some(std::cmp::Ordering::Less) => false,
                    _ => {
                        best_key = Some(k);
                        best = TieSet::EMPTY;
                        true
                    }
                };
                if joins {
                    best.offer(i, w, rng);
                }
            }
        }
    }
    // Union of two independent samples, combined in proportion to their mass.
    let (a, b) = if best.weighted.total + wild.weighted.total > 0 {
        (best.weighted, wild.weighted)
    } else {
        (best.zero, wild.zero)
    };
    match (a.pick, b.pick) {
        (Some(x), Some(y)) => Some(if rng.random_range(0..a.total + b.total) < a.total { x } else { y }),
        (x, y) => x.or(y),
    }
}

/// Reservoirs over one tie set: positive weights, and (for the "all weights
/// are 0 → uniform" rule) a uniform one over the zero-weight members.
#[derive(Clone, Copy)]
struct TieSet {
    weighted: Reservoir,
    zero: Reservoir,
}

impl TieSet {
    const EMPTY: TieSet = TieSet { weighted: Reservoir::EMPTY, zero: Reservoir::EMPTY };

    /// The weighted pick, or a uniform one when every weight was 0.
    #[inline]
    fn finish(self) -> Option<usize> {
        if self.weighted.total > 0 { self.weighted.pick } else { self.zero.pick }
    }

    #[inline]
    fn offer<R: Rng + ?Sized>(&mut self, i: usize, w: u64, rng: &mut R) {
        if w == 0 {
            self.zero.offer(i, 1, rng);
        } else {
            self.weighted.offer(i, w, rng);
        }
    }
}

/// Weighted reservoir of size one with skip-ahead (Efraimidis–Spirakis
/// jumps specialised to k = 1): after the pick changes at cumulative weight
/// `W`, no item replaces it until the cumulative weight reaches `W/u`,
/// because `P(no change up to W') = W/W'`. The item where it is reached
/// replaces the pick, which happens with probability `w/W'` as required.
#[derive(Clone, Copy)]
struct Reservoir {
    pick: Option<usize>,
    total: u64,
    /// Cumulative weight at which the next replacement happens.
    next: f64,
}

impl Reservoir {
    const EMPTY: Reservoir = Reservoir { pick: None, total: 0, next: 0.0 };

    /// Offer member `i` with weight `w > 0`.
    #[inline]
    fn offer<R: Rng + ?Sized>(&mut self, i: usize, w: u64, rng: &mut R) {
        self.total += w;
        // Totals stay far below 2^53 (u32 weights), so the f64 view is exact.
        #[allow(clippy::cast_precision_loss)]
        let total = self.total as f64;
        if total >= self.next {
            self.pick = Some(i);
            let u = 1.0 - rng.random::<f64>(); // (0, 1]
            self.next = total / u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CooldownPolicy;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Duration;

    const NOW: UnixMs = UnixMs(1_780_000_020_000); // 20 s into a UTC minute
    const PICKS: usize = 10_000;

    fn member(id: &str) -> Member<()> {
        Member {
            meta: RouteMeta {
                deployment_id: Arc::from(id),
                weight: 1,
                priority: 0,
                tags: Box::new([]),
                unit_cost: None,
                rpm_limit: None,
                tpm_limit: None,
            },
            state: Arc::new(DeploymentState::new()),
            target: Arc::new(()),
        }
    }

    fn weighted(weights: &[u32]) -> Vec<Member<()>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let mut m = member(&format!("d{i}"));
                m.meta.weight = w;
                m
            })
            .collect()
    }

    fn tagged(tags: &[&str]) -> Member<()> {
        let mut m = member(&tags.join("+"));
        m.meta.tags = tags.iter().map(|t| Arc::from(*t)).collect();
        m
    }

    fn cool_down(m: &Member<()>) {
        let p = CooldownPolicy { allowed_fails: 0, cooldown: Duration::from_secs(60) };
        m.state.record_failure("down", &p, NOW);
    }

    /// Share of picks per member index over `PICKS` draws with a fixed seed.
    fn shares(members: &[Member<()>], strategy: Strategy, tags: &[&str], pre_call: bool) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = vec![0usize; members.len()];
        for _ in 0..PICKS {
            let i = select(members, strategy, tags, pre_call, NOW, &mut rng).expect("a pick");
            counts[i] += 1;
        }
        counts.into_iter().map(|c| c as f64 / PICKS as f64).collect()
    }

    fn assert_near(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 0.03, "shares {got:?}, want {want:?}");
        }
    }

    #[test]
    fn simple_shuffle_is_uniform_and_ignores_weight() {
        let ms = weighted(&[1, 5, 10, 100]);
        assert_near(&shares(&ms, Strategy::SimpleShuffle, &[], false), &[0.25; 4]);
    }

    #[test]
    fn weighted_is_proportional() {
        let ms = weighted(&[1, 3]);
        assert_near(&shares(&ms, Strategy::Weighted, &[], false), &[0.25, 0.75]);
        let ms = weighted(&[2, 0, 6]);
        assert_near(&shares(&ms, Strategy::Weighted, &[], false), &[0.25, 0.0, 0.75]);
    }

    #[test]
    fn weighted_reservoir_matches_weights_on_larger_groups() {
        let weights: Vec<u32> = (1..=20).collect();
        let ms = weighted(&weights);
        let mut rng = StdRng::seed_from_u64(2024);
        let mut counts = [0u32; 20];
        let draws = 200_000;
        for _ in 0..draws {
            counts[select(&ms, Strategy::Weighted, &[], false, NOW, &mut rng).unwrap()] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = f64::from(weights[i]) / 210.0;
            let got = f64::from(*c) / f64::from(draws);
            assert!((got - want).abs() < 0.004, "member {i}: {got} vs {want}");
        }
    }

    #[test]
    fn weighted_all_zero_is_uniform() {
        let ms = weighted(&[0, 0]);
        assert_near(&shares(&ms, Strategy::Weighted, &[], false), &[0.5, 0.5]);
    }

    #[test]
    fn priority_picks_lowest_bucket_weighted() {
        let mut ms = weighted(&[100, 1, 3, 100]);
        for (m, p) in ms.iter_mut().zip([1, 0, 0, 2]) {
            m.meta.priority = p;
        }
        assert_near(&shares(&ms, Strategy::PriorityBased, &[], false), &[0.0, 0.25, 0.75, 0.0]);
        // The bucket empties when its members cool down: next bucket takes over.
        cool_down(&ms[1]);
        cool_down(&ms[2]);
        assert_near(&shares(&ms, Strategy::PriorityBased, &[], false), &[1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn least_busy_picks_min_in_flight() {
        let ms = weighted(&[1, 1, 3, 1]);
        let _g: Vec<_> = [(0, 2), (3, 5)]
            .into_iter()
            .flat_map(|(i, n)| (0..n).map(move |_| i))
            .map(|i| ms[i].state.begin_owned())
            .collect();
        assert_near(&shares(&ms, Strategy::LeastBusy, &[], false), &[0.0, 0.25, 0.75, 0.0]);
    }

    #[test]
    fn latency_prefers_fast_and_explores_unsampled() {
        let ms = weighted(&[1, 1, 1]);
        ms[0].state.record_latency(Duration::from_millis(10), NOW);
        ms[1].state.record_latency(Duration::from_millis(100), NOW);
        // ms[2] has no sample: it stays in the tie set (EDGE-9).
        assert_near(&shares(&ms, Strategy::LatencyBased, &[], false), &[0.5, 0.0, 0.5]);
        ms[2].state.record_latency(Duration::from_millis(50), NOW);
        assert_near(&shares(&ms, Strategy::LatencyBased, &[], false), &[1.0, 0.0, 0.0]);
        // Samples older than 5 minutes no longer count: all unsampled → weighted over all.
        let later = NOW.saturating_add(Duration::from_secs(301));
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = [false; 3];
        for _ in 0..300 {
            seen[select(&ms, Strategy::LatencyBased, &[], false, later, &mut rng).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn cost_picks_cheapest_unpriced_last() {
        let mut ms = weighted(&[1, 1, 1, 1]);
        ms[0].meta.unit_cost = None;
        ms[1].meta.unit_cost = Some(0.01);
        ms[2].meta.unit_cost = Some(0.001);
        ms[3].meta.unit_cost = Some(f64::NAN);
        assert_near(&shares(&ms, Strategy::CostBased, &[], false), &[0.0, 0.0, 1.0, 0.0]);
        cool_down(&ms[2]);
        assert_near(&shares(&ms, Strategy::CostBased, &[], false), &[0.0, 1.0, 0.0, 0.0]);
        cool_down(&ms[1]);
        assert_near(&shares(&ms, Strategy::CostBased, &[], false), &[0.5, 0.0, 0.0, 0.5]);
    }

    #[test]
    fn usage_based_picks_min_utilization() {
        let mut ms = weighted(&[1, 1, 1]);
        ms[0].meta.rpm_limit = Some(10);
        ms[0].state.add_usage(5, 0, NOW); // 0.5
        ms[1].meta.tpm_limit = Some(1000);
        ms[1].state.add_usage(9, 200, NOW); // 0.2 (no rpm limit)
        ms[2].meta.rpm_limit = Some(100);
        ms[2].meta.tpm_limit = Some(100);
        ms[2].state.add_usage(1, 90, NOW); // max(0.01, 0.9)
        assert_near(&shares(&ms, Strategy::UsageBased, &[], false), &[0.0, 1.0, 0.0]);
        assert!((utilization(&ms[2].meta, &ms[2].state, NOW) - 0.9).abs() < 1e-12);
        // Counters are per UTC minute: the next minute starts empty.
        let next = NOW.saturating_add(Duration::from_secs(60));
        assert_eq!(utilization(&ms[0].meta, &ms[0].state, next), 0.0);
    }

    #[test]
    fn rate_limit_aware_avoids_hot_deployments() {
        let mut ms = weighted(&[10, 1, 3]);
        for m in &mut ms {
            m.meta.rpm_limit = Some(100);
        }
        ms[0].state.add_usage(95, 0, NOW); // 0.95: avoided
        ms[1].state.add_usage(50, 0, NOW); // 0.5
        assert_near(&shares(&ms, Strategy::RateLimitAware, &[], false), &[0.0, 0.25, 0.75]);
        // Everyone hot: weighted over all.
        ms[1].state.add_usage(40, 0, NOW);
        ms[2].state.add_usage(99, 0, NOW);
        assert_near(&shares(&ms, Strategy::RateLimitAware, &[], false), &[10.0 / 14.0, 1.0 / 14.0, 3.0 / 14.0]);
    }

    #[test]
    fn pre_call_checks_drop_full_deployments() {
        let mut ms = weighted(&[1, 1]);
        ms[0].meta.rpm_limit = Some(3);
        ms[0].state.add_usage(3, 0, NOW); // utilization 1.0
        assert_near(&shares(&ms, Strategy::SimpleShuffle, &[], false), &[0.5, 0.5]);
        assert_near(&shares(&ms, Strategy::SimpleShuffle, &[], true), &[0.0, 1.0]);
        ms[1].meta.tpm_limit = Some(10);
        ms[1].state.add_usage(0, 11, NOW);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(select(&ms, Strategy::SimpleShuffle, &[], true, NOW, &mut rng), None);
    }

    #[test]
    fn tags_are_anded_and_exclude_untagged() {
        let ms = vec![tagged(&["eu", "gpu"]), tagged(&["eu"]), tagged(&[])];
        let s = |tags: &[&str]| shares(&ms, Strategy::TagBased, tags, false);
        assert_near(&s(&["eu", "gpu"]), &[1.0, 0.0, 0.0]);
        assert_near(&s(&["eu"]), &[0.5, 0.5, 0.0]);
        assert_near(&s(&[]), &[1.0 / 3.0; 3]);
        assert_near(&s(&[""]), &[1.0 / 3.0; 3]); // empty strings are no tags
        // Exact match only.
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(select(&ms, Strategy::Weighted, &["EU"], false, NOW, &mut rng), None);
        assert_eq!(select(&ms, Strategy::Weighted, &["us"], false, NOW, &mut rng), None);
        // The filter applies to every strategy, not only tag-based-routing.
        let picks: Vec<_> =
            (0..50).map(|_| select(&ms, Strategy::SimpleShuffle, &["gpu"], false, NOW, &mut rng)).collect();
        assert!(picks.iter().all(|p| *p == Some(0)));
    }

    #[test]
    fn unavailable_members_are_never_picked() {
        let ms = weighted(&[100, 1, 1]);
        cool_down(&ms[0]);
        ms[1].state.mark_probe(false, Some("probe failed"), &CooldownPolicy::default(), NOW);
        for st in Strategy::ALL {
            assert_near(&shares(&ms, st, &[], false), &[0.0, 0.0, 1.0]);
        }
        cool_down(&ms[2]);
        let mut rng = StdRng::seed_from_u64(9);
        for st in Strategy::ALL {
            assert_eq!(select(&ms, st, &[], false, NOW, &mut rng), None, "{st}");
        }
        // Cooldown expiry makes every member selectable again, the probe-failed one
        // included: a failed probe cools down like failures past allowed_fails.
        let later = NOW.saturating_add(Duration::from_secs(60));
        let picks: Vec<_> =
            (0..400).filter_map(|_| select(&ms, Strategy::SimpleShuffle, &[], false, later, &mut rng)).collect();
        assert_eq!(picks.len(), 400);
        assert!(picks.contains(&0) && picks.contains(&1) && picks.contains(&2));
    }

    #[test]
    fn lone_deployment_cools_down_too() {
        let ms = vec![member("only")];
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(select(&ms, Strategy::SimpleShuffle, &[], false, NOW, &mut rng), Some(0));
        let p = CooldownPolicy::default();
        for _ in 0..3 {
            ms[0].state.record_failure("503", &p, NOW);
        }
        assert_eq!(select(&ms, Strategy::SimpleShuffle, &[], false, NOW, &mut rng), None);
        let later = NOW.saturating_add(p.cooldown);
        assert_eq!(select(&ms, Strategy::SimpleShuffle, &[], false, later, &mut rng), Some(0));
    }

    #[test]
    fn empty_group_selects_nothing() {
        let ms: Vec<Member<()>> = Vec::new();
        let mut rng = StdRng::seed_from_u64(5);
        for st in Strategy::ALL {
            assert_eq!(select(&ms, st, &[], false, NOW, &mut rng), None);
        }
    }

    #[test]
    fn selection_under_concurrent_updates() {
        let ms: Arc<Vec<Member<()>>> = Arc::new(weighted(&[1, 2, 3, 4]));
        let p = CooldownPolicy { allowed_fails: 1, cooldown: Duration::from_millis(2) };
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let ms = Arc::clone(&ms);
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let m = &ms[usize::try_from((i + t) % 4).unwrap()];
                        let _g = m.state.begin();
                        let now = UnixMs(NOW.0 + i);
                        if i % 7 == 0 && t == 0 {
                            m.state.record_failure("x", &p, now);
                        } else {
                            m.state.record_success(Duration::from_millis(i % 30), 10, now);
                        }
                    }
                })
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(8);
        for i in 0..20_000u64 {
            let st = Strategy::ALL[usize::try_from(i % 9).unwrap()];
            if let Some(idx) = select(&ms, st, &[], i % 2 == 0, UnixMs(NOW.0 + i / 4), &mut rng) {
                assert!(idx < ms.len());
            }
        }
        for w in workers {
            w.join().unwrap();
        }
        assert!(ms.iter().all(|m| m.state.in_flight() == 0));
    }

    #[test]
    fn failover_order_is_primary_then_registry_order() {
        let ms = weighted(&[1, 1, 1, 1]);
        assert_eq!(failover_order(&ms, 2).collect::<Vec<_>>(), [2, 0, 1, 3]);
        assert_eq!(failover_order(&ms, 0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(failover_order(&ms, 9).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(failover_order::<()>(&[], 0).count(), 0);
    }

    #[test]
    fn route_meta_from_deployment_follows_dep7() {
        let obj = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let d = Deployment {
            deployment_id: "dep-1".into(),
            model_name: "gpt".into(),
            named_credential_id: None,
            deltallm_params: obj(serde_json::json!(
                {"model": "openai/gpt-4o", "weight": 4, "rpm": 60, "tpm": 1000}
            )),
            model_info: obj(serde_json::json!(
                {"priority": 2, "tags": ["eu", "fast"], "tpm_limit": 500}
            )),
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        };
        let meta = RouteMeta::from_deployment(&d, Some(0.5));
        assert_eq!(&*meta.deployment_id, "dep-1");
        assert_eq!((meta.weight, meta.priority), (4, 2));
        assert_eq!(meta.tags.iter().map(|t| &**t).collect::<Vec<_>>(), ["eu", "fast"]);
        assert_eq!((meta.rpm_limit, meta.tpm_limit, meta.unit_cost), (Some(60), Some(500), Some(0.5)));
    }
}
