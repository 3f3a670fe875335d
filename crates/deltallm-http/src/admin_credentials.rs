//! `/ui/api/named-credentials` routes (ADM-5, CRED-11). The fixed paths
//! `inline-report` and `convert-inline-group` are static routes, which axum
//! matches before the `{id}` capture.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use deltallm_core::Gateway;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{json_body, require_admin};
use crate::error::AdminError;

type AdminResult<T = Response> = Result<T, AdminError>;

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/ui/api/named-credentials", get(list).post(create))
        .route("/ui/api/named-credentials/inline-report", get(inline_report))
        .route("/ui/api/named-credentials/convert-inline-group", post(convert))
        .route("/ui/api/named-credentials/{id}", get(get_one).put(update).delete(remove))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    provider: Option<String>,
}

async fn list(State(gw): State<Gateway>, headers: HeaderMap, Query(p): Query<ListParams>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.list_credentials(p.provider.as_deref()).await?).into_response())
}

async fn create(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.create_credential(&body).await?).into_response())
}

async fn get_one(State(gw): State<Gateway>, headers: HeaderMap, Path(id): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.get_credential(&id).await?).into_response())
}

async fn update(State(gw): State<Gateway>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.update_credential(&id, &body).await?).into_response())
}

async fn remove(State(gw): State<Gateway>, headers: HeaderMap, Path(id): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    gw.delete_credential(&id).await?;
    Ok(Json(json!({"deleted": true, "credential_id": id})).into_response())
}

async fn inline_report(State(gw): State<Gateway>, headers: HeaderMap) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.inline_report().await?).into_response())
}

async fn convert(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.convert_inline_group(&body).await?).into_response())
}
