//! axum routes of the DeltaLLM gateway: the OpenAI-compatible `/v1` API, the
//! admin API under `/ui/api`, and health endpoints.
//!
//! Handlers are thin: they authenticate, decode, call [`deltallm_core::Gateway`]
//! and render errors in the right shape (OpenAI on `/v1`, `{"detail"}` on admin
//! routes). No business rule lives here; no database or provider crate is imported.

mod admin;
mod admin_credentials;
mod admin_route_groups;
mod auth;
mod error;
mod health;
mod openai;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use deltallm_core::Gateway;

pub use error::{AdminError, ProxyError};

/// The whole application: `/v1`, `/ui/api` and health routes.
pub fn app(gateway: Gateway) -> Router {
    let limit = gateway.settings().max_request_body_bytes;
    Router::new()
        .merge(openai::routes())
        .merge(admin::routes())
        .merge(admin_credentials::routes())
        .merge(admin_route_groups::routes())
        .merge(health::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// Only the OpenAI-compatible routes, for embedders that mount them in their own router.
pub fn openai_routes(gateway: Gateway) -> Router {
    let limit = gateway.settings().max_request_body_bytes;
    openai::routes().layer(DefaultBodyLimit::max(limit)).with_state(gateway)
}
