//! The embeddable DeltaLLM gateway.
//!
//! [`Gateway`] owns the runtime registry (an immutable snapshot behind an
//! `ArcSwap`), the shared upstream client, the spend queue and the admin
//! services that write through storage and rebuild the registry. The HTTP crate
//! and other Rust services call it in-process. The core never reads the
//! environment or files (it takes [`GatewaySettings`]) and never imports axum.

pub mod admin;
pub mod error;
pub mod gateway;
pub mod health;
pub mod pricing;
pub mod proxy;
pub mod registry;
pub mod settings;
pub mod spend;
mod streaming;

pub use error::{Error, Result};
pub use gateway::Gateway;
pub use settings::{DeploymentSource, GatewaySettings};

/// Types of the layers below that the gateway's own API takes, so that an
/// HTTP front end needs only this crate and the domain crate.
pub use deltallm_providers::{FormField, FormValue};
pub use deltallm_storage::DeploymentQuery;
