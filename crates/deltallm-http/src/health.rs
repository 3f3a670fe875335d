//! Liveness and readiness (RUN-19). No auth.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use deltallm_core::Gateway;
use http::StatusCode;
use serde_json::json;

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/health", get(health))
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
}

async fn health(State(gw): State<Gateway>) -> impl IntoResponse {
    let registry = gw.registry();
    Json(json!({"status": "healthy", "models": registry.entries.len(), "deployments": registry.deployments.len()}))
}

async fn liveliness() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

async fn readiness(State(gw): State<Gateway>) -> impl IntoResponse {
    match gw.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready", "db": "connected"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "degraded", "db": "unreachable"})))
        }
    }
}
