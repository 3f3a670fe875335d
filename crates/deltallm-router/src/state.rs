//! Live per-deployment state (RUN-9, RUN-13, RUN-20, RUN-21): lock-free atomics.
//!
//! One [`DeploymentState`] exists per deployment id and is shared through an
//! `Arc` by every routing-table generation: the core looks the id up in the
//! old table when it builds a new one, so counters, cooldowns and latency
//! history survive registry rebuilds.
//!
//! Nothing here takes a lock. Plain counters are relaxed atomics; the two
//! multi-field values (a usage counter with its minute, the latency mean with
//! its weight) are packed into one `u64` each and updated by compare-and-swap,
//! so readers never see a torn pair. `last_error` is an `ArcSwapOption` and is
//! written only on the failure path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use deltallm_domain::settings::RouterSettings;
use serde::Serialize;

use crate::clock::{UnixMs, duration_ms, rfc3339};

/// Characters of an error message kept in `last_error` (RUN-9).
pub const LAST_ERROR_MAX_CHARS: usize = 200;
/// A failure streak older than this restarts at 1 (RUN-9 failure counter TTL 300 s).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Latency samples older than this no longer count (RUN-8: last 5 minutes).
pub const LATENCY_WINDOW: Duration = Duration::from_secs(300);
/// Time constant of the latency decay, `weight = e^(−age / 60 s)` (RUN-8).
pub const LATENCY_TAU: Duration = Duration::from_secs(60);

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_TRUE: u8 = 1;
const HEALTH_FALSE: u8 = 2;

/// When a deployment is put into cooldown (RUN-13, CFG-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// Consecutive failures tolerated; the next one starts a cooldown.
    /// Default 2: the 3rd consecutive failure cools down (EDGE-7).
    pub allowed_fails: u32,
    /// Cooldown length (default 60 s).
    pub cooldown: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        Self { allowed_fails: 2, cooldown: Duration::from_secs(60) }
    }
}

impl CooldownPolicy {
    /// From `router_settings` (`allowed_fails`, `cooldown_time` seconds).
    /// A negative or non-finite `cooldown_time` falls back to 60 s.
    pub fn from_settings(settings: &RouterSettings) -> Self {
        Self {
            allowed_fails: settings.allowed_fails,
            cooldown: Duration::try_from_secs_f64(settings.cooldown_time).unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// Live health, load and performance of one deployment.
///
/// **Latency.** The RUN-8 time-decayed mean (weight `e^(−age/60 s)`) is kept
/// incrementally instead of as a sample ring: the decayed mean `Σwᵢxᵢ / Σwᵢ`
/// does not change when all weights decay by the same factor, so it only moves
/// when a sample arrives: `W ← W·e^(−Δt/τ) + 1`, `m ← m + (x − m)/W`. Mean and
/// `W` are two `f32`s packed into one atomic (CAS update), and the time of the
/// last sample sits next to it. Reading is one load, so latency routing over
/// 1,000 members costs no `exp` calls. The 5-minute window is applied at
/// sample granularity: when the newest sample is older than 5 minutes the
/// deployment counts as unsampled, and a sample arriving after such a gap
/// starts afresh. Older samples inside a live history keep a weight below
/// `e^(−5)` ≈ 0.7 % of a fresh one instead of exactly zero.
#[derive(Debug)]
pub struct DeploymentState {
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Unix ms until which the deployment is cooling down; 0 = never.
    cooldown_until: AtomicU64,
    /// `HEALTH_*`: unknown until the first request or probe.
    healthy: AtomicU8,
    /// `(mean_ms: f32) << 32 | (weight: f32)`.
    latency: AtomicU64,
    /// Unix ms of the newest latency sample; 0 = none.
    latency_at: AtomicU64,
    /// `minute << 32 | count` for requests in the current UTC minute.
    requests: AtomicU64,
    /// `minute << 32 | count` for tokens in the current UTC minute.
    tokens: AtomicU64,
    last_error: ArcSwapOption<String>,
    /// Unix ms; 0 = never.
    last_error_at: AtomicU64,
    /// Unix ms; 0 = never.
    last_success_at: AtomicU64,
}

impl Default for DeploymentState {
    fn default() -> Self {
        Self::new()
    }
}

impl DeploymentState {
    /// Fresh state: healthy (unknown), no load, no samples.
    pub fn new() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            healthy: AtomicU8::new(HEALTH_UNKNOWN),
            latency: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            last_error: ArcSwapOption::const_empty(),
            last_error_at: AtomicU64::new(0),
            last_success_at: AtomicU64::new(0),
        }
    }

    /// Count one request in flight until the returned guard drops.
    pub fn begin(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlightGuard { state: self }
    }

    /// Like [`begin`](Self::begin) but the guard owns an `Arc`, so it can
    /// live in a `'static` stream body.
    pub fn begin_owned(self: &Arc<Self>) -> OwnedInFlightGuard {
        self.in_flight.fetch_add(1, Relaxed);
        OwnedInFlightGuard { state: Arc::clone(self) }
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// A request succeeded: reset the failure streak, mark healthy, record
    /// the latency sample and count one request plus `tokens` for this minute.
    /// An active cooldown is left to expire (only a probe clears it, RUN-21).
    pub fn record_success(&self, latency: Duration, tokens: u64, now: UnixMs) {
        // Loads before stores keep the common case free of cache-line writes.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.healthy.load(Relaxed) != HEALTH_TRUE {
            self.healthy.store(HEALTH_TRUE, Relaxed);
        }
        self.last_success_at.fetch_max(now.0, Relaxed);
        self.record_latency(latency, now);
        self.add_usage(1, tokens, now);
    }

    /// A health-affecting failure (RUN-11): extend the streak, keep the
    /// message (≤ 200 chars) and, once the streak exceeds
    /// `policy.allowed_fails`, cool down for `policy.cooldown` (RUN-13).
    /// Returns true when this call started a cooldown. The request counts
    /// toward this minute's usage.
    pub fn record_failure(&self, error: &str, policy: &CooldownPolicy, now: UnixMs) -> bool {
        self.add_usage(1, 0, now);
        self.note_failure(error, policy, now)
    }

    /// Record a health-check result (RUN-21/22). Success marks the
    /// deployment healthy and clears cooldown and streak. Failure marks it
    /// unhealthy, counts as a failure and cools it down at once for
    /// `policy.cooldown`: the probe already showed the upstream is down.
    /// Once that cooldown expires it is selectable again, so a deployment
    /// never stays out of routing just because no later probe ran (with
    /// background checks off); the flag clears on the next success.
    pub fn mark_probe(&self, ok: bool, error: Option<&str>, policy: &CooldownPolicy, now: UnixMs) {
        if ok {
            self.healthy.store(HEALTH_TRUE, Relaxed);
            self.consecutive_failures.store(0, Relaxed);
            self.cooldown_until.store(0, Relaxed);
            self.last_success_at.fetch_max(now.0, Relaxed);
        } else {
            self.healthy.store(HEALTH_FALSE, Relaxed);
            self.note_failure(error.unwrap_or("health check failed"), policy, now);
            self.cooldown_until.fetch_max(now.saturating_add(policy.cooldown).0, Relaxed);
        }
    }

    /// RUN-20: selectable unless a cooldown is running (request failures
    /// past `allowed_fails`, or a failed probe). Cooldown expiry alone makes
    /// it selectable again (RUN-13 note).
    #[inline]
    pub fn is_available(&self, now: UnixMs) -> bool {
        !self.in_cooldown(now)
    }

    /// Is a cooldown running at `now`?
    #[inline]
    pub fn in_cooldown(&self, now: UnixMs) -> bool {
        now.0 < self.cooldown_until.load(Relaxed)
    }

    /// The health flag: `None` before any request or probe finished.
    pub fn health_flag(&self) -> Option<bool> {
        match self.healthy.load(Relaxed) {
            HEALTH_TRUE => Some(true),
            HEALTH_FALSE => Some(false),
            _ => None,
        }
    }

    /// Current failure streak.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// RUN-8 time-decayed mean latency in ms, `None` without a sample in
    /// the last 5 minutes.
    #[inline]
    pub fn avg_latency_ms(&self, now: UnixMs) -> Option<f64> {
        let at = self.latency_at.load(Relaxed);
        if at == 0 || now.0.saturating_sub(at) > duration_ms(LATENCY_WINDOW) {
            return None;
        }
        let (mean, _) = unpack_f32s(self.latency.load(Relaxed));
        Some(f64::from(mean))
    }

    /// Add a latency sample without touching health (e.g. a streamed
    /// response whose success was already recorded).
    pub fn record_latency(&self, latency: Duration, now: UnixMs) {
        // f32 is plenty for a routing heuristic and lets mean + weight share one atomic.
        #[allow(clippy::cast_possible_truncation)]
        let x = (latency.as_secs_f64() * 1000.0) as f32;
        let prev = self.latency_at.fetch_max(now.0, Relaxed);
        let decay = if prev == 0 {
            0.0
        } else {
            let dt = now.0.saturating_sub(prev);
            if dt > duration_ms(LATENCY_WINDOW) {
                0.0 // everything before the gap is out of the window
            } else {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let d = (-(dt as f64) / LATENCY_TAU.as_secs_f64() / 1000.0).exp() as f32;
                d
            }
        };
        let _ = self.latency.fetch_update(Relaxed, Relaxed, |cur| {
            let (mean, weight) = unpack_f32s(cur);
            let weight = weight * decay + 1.0;
            let mean = mean + (x - mean) / weight;
            Some(pack_f32s(mean, weight))
        });
    }

    /// Add `requests` and `tokens` to the current UTC minute's counters (RUN-7).
    pub fn add_usage(&self, requests: u64, tokens: u64, now: UnixMs) {
        let minute = now.minute();
        if requests > 0 {
            bump_minute_counter(&self.requests, minute, requests);
        }
        if tokens > 0 {
            bump_minute_counter(&self.tokens, minute, tokens);
        }
    }

    /// `(requests, tokens)` counted in the UTC minute of `now`.
    #[inline]
    pub fn usage(&self, now: UnixMs) -> (u64, u64) {
        let minute = now.minute();
        (read_minute_counter(&self.requests, minute), read_minute_counter(&self.tokens, minute))
    }

    /// Requests counted in UTC minute `minute` (as [`UnixMs::minute`] numbers it).
    #[inline]
    pub(crate) fn requests_in(&self, minute: u64) -> u32 {
        low32(read_minute_counter(&self.requests, minute))
    }

    /// Tokens counted in UTC minute `minute`.
    #[inline]
    pub(crate) fn tokens_in(&self, minute: u64) -> u32 {
        low32(read_minute_counter(&self.tokens, minute))
    }

    /// Serializable view for admin/health endpoints.
    pub fn snapshot(&self, now: UnixMs) -> HealthSnapshot {
        let until = self.cooldown_until.load(Relaxed);
        let in_cooldown = now.0 < until;
        let nonzero = |v: u64| (v != 0).then_some(v);
        HealthSnapshot {
            healthy: self.healthy.load(Relaxed) != HEALTH_FALSE && !in_cooldown,
            in_cooldown,
            cooldown_until: in_cooldown.then(|| until.div_ceil(1000)),
            consecutive_failures: self.consecutive_failures(),
            last_error: self.last_error.load_full().map(|e| e.as_str().to_owned()),
            last_error_at: nonzero(self.last_error_at.load(Relaxed)).and_then(rfc3339),
            last_success_at: nonzero(self.last_success_at.load(Relaxed)).and_then(rfc3339),
            in_flight: self.in_flight(),
            avg_latency_ms: self.avg_latency_ms(now),
        }
    }

    fn note_failure(&self, error: &str, policy: &CooldownPolicy, now: UnixMs) -> bool {
        let prev_at = self.last_error_at.swap(now.0, Relaxed);
        if prev_at != 0 && now.0.saturating_sub(prev_at) > duration_ms(FAILURE_WINDOW) {
            self.consecutive_failures.store(0, Relaxed);
        }
        let streak = self
            .consecutive_failures
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1)))
            .map_or(u32::MAX, |n| n.saturating_add(1));
        let kept = match error.char_indices().nth(LAST_ERROR_MAX_CHARS) {
            Some((end, _)) => &error[..end],
            None => error,
        };
        self.last_error.store(Some(Arc::new(kept.to_owned())));
        if streak <= policy.allowed_fails {
            return false;
        }
        let until = now.saturating_add(policy.cooldown).0;
        let prev_until = self.cooldown_until.fetch_max(until, Relaxed);
        until > now.0 && prev_until <= now.0
    }
}

/// Decrements the in-flight count on drop. See [`DeploymentState::begin`].
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlightGuard<'a> {
    state: &'a DeploymentState,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Owning variant of [`InFlightGuard`]. See [`DeploymentState::begin_owned`].
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct OwnedInFlightGuard {
    state: Arc<DeploymentState>,
}

impl Drop for OwnedInFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

/// RUN-9 health view of one deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSnapshot {
    /// Flag not false and no cooldown (RUN-20).
    pub healthy: bool,
    /// A cooldown is running.
    pub in_cooldown: bool,
    /// Cooldown end in unix seconds (rounded up), null when not cooling down.
    pub cooldown_until: Option<u64>,
    /// Current failure streak.
    pub consecutive_failures: u32,
    /// Last failure message, ≤ 200 chars.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
    /// RFC 3339.
    pub last_success_at: Option<String>,
    /// Requests in flight.
    pub in_flight: u32,
    /// Time-decayed mean latency over the last 5 minutes.
    pub avg_latency_ms: Option<f64>,
}

const LOW32: u64 = 0xFFFF_FFFF;

fn pack_f32s(hi: f32, lo: f32) -> u64 {
    (u64::from(hi.to_bits()) << 32) | u64::from(lo.to_bits())
}

fn unpack_f32s(v: u64) -> (f32, f32) {
    // Both halves are masked/shifted to 32 bits, so the casts are lossless.
    #[allow(clippy::cast_possible_truncation)]
    (f32::from_bits((v >> 32) as u32), f32::from_bits((v & LOW32) as u32))
}

/// Add `n` to a `minute << 32 | count` cell, restarting the count when the
/// minute moved on. Counts saturate at `u32::MAX` per minute; a sample from
/// an earlier minute than the stored one (clock skew between threads) is
/// added to the stored minute.
fn bump_minute_counter(cell: &AtomicU64, minute: u64, n: u64) {
    let minute = minute & LOW32;
    let _ = cell.fetch_update(Relaxed, Relaxed, |cur| {
        let (m, c) = (cur >> 32, cur & LOW32);
        let next = if minute <= m { (m, c.saturating_add(n).min(LOW32)) } else { (minute, n.min(LOW32)) };
        Some((next.0 << 32) | next.1)
    });
}

/// Counts are stored in the low 32 bits, so this never truncates.
#[inline]
fn low32(v: u64) -> u32 {
    u32::try_from(v & LOW32).unwrap_or(u32::MAX)
}

#[inline]
fn read_minute_counter(cell: &AtomicU64, minute: u64) -> u64 {
    let cur = cell.load(Relaxed);
    if cur >> 32 >= minute & LOW32 { cur & LOW32 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMs = UnixMs(1_780_000_000_000);

    fn policy() -> CooldownPolicy {
        CooldownPolicy::default()
    }

    #[test]
    fn third_consecutive_failure_enters_cooldown() {
        let s = DeploymentState::new();
        assert!(!s.record_failure("boom", &policy(), T0));
        assert!(!s.record_failure("boom", &policy(), T0));
        assert!(s.is_available(T0));
        assert!(s.record_failure("boom", &policy(), T0));
        assert!(!s.is_available(T0));
        let snap = s.snapshot(T0);
        assert!(!snap.healthy);
        assert!(snap.in_cooldown);
        assert_eq!(snap.cooldown_until, Some(T0.0 / 1000 + 60));
        assert_eq!(snap.consecutive_failures, 3);
        // Further failures during cooldown do not "enter" it again.
        assert!(!s.record_failure("boom", &policy(), T0));
    }

    #[test]
    fn allowed_fails_zero_cools_on_first_failure() {
        let s = DeploymentState::new();
        let p = CooldownPolicy { allowed_fails: 0, cooldown: Duration::from_secs(5) };
        assert!(s.record_failure("x", &p, T0));
        assert!(!s.is_available(T0));
        assert!(s.is_available(T0.saturating_add(Duration::from_secs(5))));
    }

    #[test]
    fn success_resets_streak() {
        let s = DeploymentState::new();
        s.record_failure("a", &policy(), T0);
        s.record_failure("b", &policy(), T0);
        s.record_success(Duration::from_millis(10), 5, T0);
        assert_eq!(s.consecutive_failures(), 0);
        assert_eq!(s.health_flag(), Some(true));
        assert!(!s.record_failure("c", &policy(), T0));
        assert!(!s.record_failure("d", &policy(), T0));
        assert!(s.is_available(T0));
        assert!(s.record_failure("e", &policy(), T0));
    }

    #[test]
    fn cooldown_expiry_makes_available_again() {
        let s = DeploymentState::new();
        for _ in 0..3 {
            s.record_failure("down", &policy(), T0);
        }
        assert!(!s.is_available(T0.saturating_add(Duration::from_secs(59))));
        let later = T0.saturating_add(Duration::from_secs(60));
        assert!(s.is_available(later));
        let snap = s.snapshot(later);
        assert!(snap.healthy);
        assert!(!snap.in_cooldown);
        assert_eq!(snap.cooldown_until, None);
    }

    #[test]
    fn failure_streak_expires_after_window() {
        let s = DeploymentState::new();
        s.record_failure("a", &policy(), T0);
        s.record_failure("b", &policy(), T0);
        let later = T0.saturating_add(FAILURE_WINDOW + Duration::from_secs(1));
        assert!(!s.record_failure("c", &policy(), later));
        assert_eq!(s.consecutive_failures(), 1);
    }

    #[test]
    fn probe_failure_cools_down_and_the_flag_clears_on_success() {
        let s = DeploymentState::new();
        s.mark_probe(false, Some("connect refused"), &policy(), T0);
        assert!(!s.is_available(T0));
        assert_eq!(s.consecutive_failures(), 1);
        assert_eq!(s.health_flag(), Some(false));
        // Selectable again once the cooldown passes, even if no probe runs again.
        assert!(!s.is_available(T0.saturating_add(policy().cooldown - Duration::from_millis(1))));
        assert!(s.is_available(T0.saturating_add(policy().cooldown)));
        s.mark_probe(true, None, &policy(), T0);
        assert!(s.is_available(T0));
        assert_eq!((s.consecutive_failures(), s.health_flag()), (0, Some(true)));
    }

    #[test]
    fn probe_success_clears_cooldown() {
        let s = DeploymentState::new();
        for _ in 0..3 {
            s.record_failure("x", &policy(), T0);
        }
        assert!(!s.is_available(T0));
        s.mark_probe(true, None, &policy(), T0);
        assert!(s.is_available(T0));
    }

    #[test]
    fn request_success_keeps_running_cooldown() {
        let s = DeploymentState::new();
        for _ in 0..3 {
            s.record_failure("x", &policy(), T0);
        }
        s.record_success(Duration::from_millis(5), 0, T0);
        assert!(!s.is_available(T0));
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn last_error_is_truncated_to_200_chars() {
        let s = DeploymentState::new();
        let long: String = "é".repeat(500);
        s.record_failure(&long, &policy(), T0);
        let snap = s.snapshot(T0);
        assert_eq!(snap.last_error.as_deref().map(|e| e.chars().count()), Some(200));
    }

    #[test]
    fn snapshot_serializes() {
        let s = DeploymentState::new();
        let _g = s.begin();
        s.record_success(Duration::from_millis(120), 10, T0);
        s.record_failure("upstream 503", &policy(), T0.saturating_add(Duration::from_secs(1)));
        let v = serde_json::to_value(s.snapshot(T0.saturating_add(Duration::from_secs(1)))).unwrap();
        assert_eq!(v["healthy"], true);
        assert_eq!(v["in_cooldown"], false);
        assert_eq!(v["cooldown_until"], serde_json::Value::Null);
        assert_eq!(v["consecutive_failures"], 1);
        assert_eq!(v["last_error"], "upstream 503");
        assert_eq!(v["last_error_at"], "2026-05-28T20:26:41.000Z");
        assert_eq!(v["last_success_at"], "2026-05-28T20:26:40.000Z");
        assert_eq!(v["in_flight"], 1);
        assert_eq!(v["avg_latency_ms"], 120.0);
        let fresh = serde_json::to_value(DeploymentState::new().snapshot(T0)).unwrap();
        assert_eq!(fresh["last_error_at"], serde_json::Value::Null);
        assert_eq!(fresh["avg_latency_ms"], serde_json::Value::Null);
    }

    #[test]
    fn latency_decayed_mean() {
        let s = DeploymentState::new();
        assert_eq!(s.avg_latency_ms(T0), None);
        s.record_latency(Duration::from_millis(100), T0);
        assert_eq!(s.avg_latency_ms(T0), Some(100.0));
        // A sample 60 s later: old weight e^-1 ≈ 0.368 → mean ≈ (36.8 + 200)/1.368.
        let t1 = T0.saturating_add(Duration::from_secs(60));
        s.record_latency(Duration::from_millis(200), t1);
        let expected = (100.0 * (-1f64).exp() + 200.0) / ((-1f64).exp() + 1.0);
        let got = s.avg_latency_ms(t1).unwrap();
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
        // Outside the 5-minute window: unsampled again.
        let t2 = t1.saturating_add(LATENCY_WINDOW + Duration::from_millis(1));
        assert_eq!(s.avg_latency_ms(t2), None);
        // A sample after the gap starts afresh.
        s.record_latency(Duration::from_millis(7), t2);
        assert_eq!(s.avg_latency_ms(t2), Some(7.0));
    }

    #[test]
    fn usage_counts_per_minute() {
        let s = DeploymentState::new();
        let t = UnixMs(T0.0 - T0.0 % 60_000);
        s.record_success(Duration::from_millis(1), 100, t);
        s.record_failure("x", &policy(), t.saturating_add(Duration::from_secs(30)));
        assert_eq!(s.usage(t.saturating_add(Duration::from_secs(59))), (2, 100));
        let next = t.saturating_add(Duration::from_secs(60));
        assert_eq!(s.usage(next), (0, 0));
        s.add_usage(1, 7, next);
        assert_eq!(s.usage(next), (1, 7));
    }

    #[test]
    fn guards_balance_in_flight() {
        let s = Arc::new(DeploymentState::new());
        let a = s.begin();
        let b = s.begin_owned();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn concurrent_hammering_is_consistent() {
        let s = Arc::new(DeploymentState::new());
        let p = CooldownPolicy { allowed_fails: 2, cooldown: Duration::from_millis(1) };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let now = UnixMs(T0.0 + i);
                        let _g = s.begin();
                        let _o = s.begin_owned();
                        if (i + t) % 3 == 0 {
                            s.record_failure("err", &p, now);
                        } else {
                            s.record_success(Duration::from_millis(i % 50), 3, now);
                        }
                        let _ = s.is_available(now);
                        let _ = s.snapshot(now);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.in_flight(), 0);
        let (req, tok) = s.usage(UnixMs(T0.0 + 9_999));
        assert_eq!(req, 80_000);
        assert!(tok > 0);
        let mean = s.avg_latency_ms(UnixMs(T0.0 + 10_000)).unwrap();
        assert!((0.0..50.0).contains(&mean), "{mean}");
    }
}
