//! Admin services behind `/ui/api`: every write validates with the domain
//! rules, persists through storage and rebuilds the registry.

pub mod audit;
pub mod credentials;
pub mod deployments;
pub mod presets;
pub mod route_groups;
pub mod spend;

pub use credentials::{Conversion, CredentialList, CredentialView, InlineReport};
pub use deployments::{HealthCheckResult, ModelEntry, ModelPage, ModelWrite};
