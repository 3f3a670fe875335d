//! Domain types and validation rules of the DeltaLLM gateway.
//!
//! This crate owns the vocabulary every other crate speaks: deployments, named
//! credentials, providers, workload modes, `chat_batching`, access-group keys,
//! custom auth headers, redaction and the error kinds. It performs no IO and must
//! not depend on storage, HTTP or provider crates: every path that accepts a
//! deployment (admin API, config bootstrap, batch worker) runs the same rules here.

pub mod access_groups;
pub mod auth_header;
pub mod chat_batching;
pub mod credential;
pub mod deployment;
pub mod error;
pub mod model_info;
pub mod params;
pub mod policy;
pub mod provider;
pub mod redaction;
pub mod route_group;
pub mod secret;
pub mod settings;

pub use error::{ApiErrorKind, Error, Result};
pub use secret::SecretString;
