//! `/ui/api` admin routes (ADM-1..4 master-key part, spend summary).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use deltallm_core::{DeploymentQuery, Error, Gateway};
use deltallm_domain::ApiErrorKind;
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::presented_key;
use crate::error::AdminError;

type AdminResult<T = Response> = Result<T, AdminError>;

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/ui/api/models", get(list_models).post(create_model))
        .route("/ui/api/models/{*rest}", get(model_tail).put(model_tail).delete(model_tail).post(model_tail))
        .route("/ui/api/provider-presets", get(provider_presets))
        .route("/ui/api/spend/summary", get(spend_summary))
}

pub(crate) fn require_admin(gw: &Gateway, headers: &HeaderMap) -> Result<(), AdminError> {
    gw.check_master_key(presented_key(headers)).map_err(AdminError)
}

/// Decode a JSON body; malformed JSON is a 422 (CONV-1).
pub(crate) fn json_body(bytes: &Bytes) -> Result<Value, AdminError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AdminError(Error::new(ApiErrorKind::Unprocessable, format!("Malformed JSON body: {e}"))))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    search: Option<String>,
    provider: Option<String>,
    mode: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

fn number(v: Option<&str>, name: &str, default: u64) -> Result<u64, AdminError> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| AdminError(Error::invalid(format!("{name} must be a non-negative integer")))),
    }
}

async fn list_models(State(gw): State<Gateway>, headers: HeaderMap, Query(p): Query<ListParams>) -> AdminResult {
    require_admin(&gw, &headers)?;
    let query = DeploymentQuery {
        search: p.search,
        provider: p.provider,
        mode: p.mode,
        limit: number(p.limit.as_deref(), "limit", 100)?,
        offset: number(p.offset.as_deref(), "offset", 0)?,
    };
    Ok(Json(gw.list_models(query).await?).into_response())
}

async fn create_model(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.create_model(&body).await?).into_response())
}

/// `/ui/api/models/{id}` and `/ui/api/models/{id}/health-check`; ids may hold `/`.
async fn model_tail(
    State(gw): State<Gateway>,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
    body: Bytes,
) -> AdminResult {
    require_admin(&gw, &headers)?;
    if method == Method::POST {
        let Some(id) = rest.strip_suffix("/health-check") else {
            return Err(AdminError(Error::new(ApiErrorKind::NotFound, "Not found")));
        };
        return Ok(Json(gw.health_check(id).await?).into_response());
    }
    let id = rest.as_str();
    match method {
        Method::GET => Ok(Json(gw.get_model(id).await?).into_response()),
        Method::PUT => {
            let body = json_body(&body)?;
            Ok(Json(gw.update_model(id, &body).await?).into_response())
        }
        Method::DELETE => {
            gw.delete_model(id).await?;
            Ok(Json(json!({"deleted": true})).into_response())
        }
        _ => Err(AdminError(Error::new(ApiErrorKind::NotFound, "Not found"))),
    }
}

async fn provider_presets(State(gw): State<Gateway>, headers: HeaderMap) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(json!({ "data": deltallm_core::admin::presets::provider_presets() })).into_response())
}

#[derive(Debug, Deserialize)]
struct SpendParams {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn spend_summary(State(gw): State<Gateway>, headers: HeaderMap, Query(p): Query<SpendParams>) -> AdminResult {
    require_admin(&gw, &headers)?;
    let group_by = p.group_by.unwrap_or_else(|| "model".into());
    let rows = gw.spend_summary(&group_by, p.from.as_deref(), p.to.as_deref()).await?;
    // Records this process could not store, since it started: the totals
    // above are short by these requests.
    let unrecorded = json!({ "queue_full": gw.spend_dropped(), "write_failed": gw.spend_failed() });
    Ok(Json(json!({ "group_by": group_by, "data": rows, "unrecorded": unrecorded })).into_response())
}
