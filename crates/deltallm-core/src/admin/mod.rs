//! Admin services behind `/ui/api`: every write validates with the domain
//! rules, persists through storage and rebuilds the registry.

pub mod deployments;
pub mod presets;
pub mod spend;

pub use deployments::{HealthCheckResult, ModelEntry, ModelPage, ModelWrite};
