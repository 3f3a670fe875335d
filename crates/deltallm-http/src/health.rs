//! Liveness, readiness, deployment health and failover events (RUN-19). No auth.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use deltallm_core::{Error, Gateway};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::error::AdminError;

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/health", get(health))
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/health/deployments", get(deployments))
        .route("/health/fallback-events", get(fallback_events))
}

#[derive(Debug, Deserialize)]
struct DeploymentsParams {
    model: Option<String>,
}

/// Overall status plus per-deployment health; 503 when nothing is healthy.
async fn deployments(State(gw): State<Gateway>, Query(p): Query<DeploymentsParams>) -> Result<Response, AdminError> {
    let report = gw.deployment_health(p.model.as_deref())?;
    let status = if report.status == "unhealthy" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    Ok((status, Json(report)).into_response())
}

#[derive(Debug, Deserialize)]
struct EventsParams {
    limit: Option<String>,
}

/// Newest failover steps first; `limit` defaults to 50 and is capped at 200.
async fn fallback_events(State(gw): State<Gateway>, Query(p): Query<EventsParams>) -> Result<Response, AdminError> {
    let limit = match p.limit.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => 50,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| AdminError(Error::invalid("limit must be an integer between 1 and 200")))?,
    };
    Ok(Json(gw.fallback_events(limit)).into_response())
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
