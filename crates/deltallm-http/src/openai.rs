//! OpenAI-compatible `/v1` routes.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use deltallm_core::Gateway;
use http::HeaderMap;
use serde_json::json;

use crate::auth::presented_key;
use crate::error::ProxyError;

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
}

/// RUN-2: callable targets visible to the caller, sorted.
async fn list_models(
    State(gw): State<Gateway>,
    headers: HeaderMap,
) -> Result<Response, ProxyError> {
    gw.check_master_key(presented_key(&headers))?;
    let registry = gw.registry();
    let created = registry.built_at;
    let data: Vec<_> = registry
        .sorted_keys
        .iter()
        .map(|k| json!({"id": k.as_ref(), "object": "model", "created": created, "owned_by": "deltallm"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}
