//! Routing decisions and live deployment state for the DeltaLLM gateway.
//!
//! This crate owns:
//! - [`select()`]: RUN-6 selection within one routing-table entry — availability,
//!   tag filter, optional pre-call utilization check, then one of the RUN-8
//!   [`Strategy`]s — and the RUN-10 [`failover_order`];
//! - [`DeploymentState`]: lock-free per-deployment atomics (in-flight count,
//!   failure streak, cooldown, health flag, decayed latency mean, per-minute
//!   usage) carried across registry rebuilds by deployment id;
//! - [`Backoff`]: the RUN-10 retry delay;
//! - [`RouteMeta`]: DEP-7 routing facts precomputed at registry build.
//!
//! It is pure, synchronous logic on the request hot path: selection
//! allocates nothing and takes no locks. It must not import IO, an async
//! runtime (no tokio), a database, HTTP or provider clients; time comes in as
//! a [`UnixMs`] parameter and randomness as a caller-supplied [`rand::Rng`].

pub mod backoff;
pub mod clock;
pub mod error;
pub mod select;
pub mod state;
pub mod strategy;

pub use backoff::{Backoff, retry_delay};
pub use clock::UnixMs;
pub use error::{Error, Result};
pub use select::{Member, RouteMeta, failover_order, select, utilization};
pub use state::{CooldownPolicy, DeploymentState, HealthSnapshot, InFlightGuard, OwnedInFlightGuard};
pub use strategy::{Strategy, parse_strategy_or_default};
