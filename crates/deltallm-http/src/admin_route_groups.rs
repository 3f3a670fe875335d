//! `/ui/api/route-groups` (ADM-6) and their policies (ADM-7). Master key
//! auth, `{"detail"}` errors; the core owns every rule.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use deltallm_core::{Error, Gateway};
use deltallm_domain::ApiErrorKind;
use http::HeaderMap;
use serde_json::{Value, json};

use crate::admin::{json_body, require_admin};
use crate::error::AdminError;

type AdminResult<T = Response> = Result<T, AdminError>;

const BASE: &str = "/ui/api/route-groups";

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route(BASE, get(list).post(create))
        .route(&format!("{BASE}/{{key}}"), get(get_one).put(update).delete(remove))
        .route(&format!("{BASE}/{{key}}/members"), get(members).post(upsert_member))
        // Deployment ids may contain '/', so the member id is a path tail.
        .route(&format!("{BASE}/{{key}}/members/{{*deployment_id}}"), delete(remove_member))
        .route(&format!("{BASE}/{{key}}/policy"), get(policy).put(put_policy))
        .route(&format!("{BASE}/{{key}}/policies"), get(policies))
        .route(&format!("{BASE}/{{key}}/policy/{{action}}"), post(policy_action))
}

/// A JSON body where an empty one means `null` (publish/simulate take none).
fn optional_body(bytes: &Bytes) -> Result<Value, AdminError> {
    if bytes.iter().all(u8::is_ascii_whitespace) { Ok(Value::Null) } else { json_body(bytes) }
}

async fn list(State(gw): State<Gateway>, headers: HeaderMap) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(json!({ "data": gw.list_route_groups().await? })).into_response())
}

async fn create(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.create_route_group(&body).await?).into_response())
}

async fn get_one(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.get_route_group(&key).await?).into_response())
}

async fn update(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>, body: Bytes) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.update_route_group(&key, &body).await?).into_response())
}

async fn remove(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    gw.delete_route_group(&key).await?;
    Ok(Json(json!({"deleted": true, "group_key": key})).into_response())
}

async fn members(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(json!({ "data": gw.list_route_group_members(&key).await? })).into_response())
}

async fn upsert_member(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Bytes,
) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.upsert_route_group_member(&key, &body).await?).into_response())
}

async fn remove_member(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path((key, deployment_id)): Path<(String, String)>,
) -> AdminResult {
    require_admin(&gw, &headers)?;
    gw.delete_route_group_member(&key, &deployment_id).await?;
    Ok(Json(json!({"deleted": true, "deployment_id": deployment_id})).into_response())
}

async fn policy(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.get_route_group_policy(&key).await?).into_response())
}

async fn put_policy(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(key): Path<String>,
    body: Bytes,
) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = json_body(&body)?;
    Ok(Json(gw.put_route_group_policy(&key, &body).await?).into_response())
}

async fn policies(State(gw): State<Gateway>, headers: HeaderMap, Path(key): Path<String>) -> AdminResult {
    require_admin(&gw, &headers)?;
    Ok(Json(json!({ "data": gw.list_route_group_policies(&key).await? })).into_response())
}

async fn policy_action(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path((key, action)): Path<(String, String)>,
    body: Bytes,
) -> AdminResult {
    require_admin(&gw, &headers)?;
    let body = optional_body(&body)?;
    let out = match action.as_str() {
        "validate" => serde_json::to_value(gw.validate_route_group_policy(&key, &body).await?),
        "draft" => serde_json::to_value(gw.save_route_group_policy_draft(&key, &body).await?),
        "publish" => serde_json::to_value(gw.publish_route_group_policy(&key, &body).await?),
        "rollback" => serde_json::to_value(gw.rollback_route_group_policy(&key, &body).await?),
        "simulate" => serde_json::to_value(gw.simulate_route_group_policy(&key, &body).await?),
        _ => return Err(AdminError(Error::new(ApiErrorKind::NotFound, "Not found"))),
    };
    out.map(|v| Json(v).into_response()).map_err(|e| {
        tracing::error!(error = %e, "serializing a policy response failed");
        AdminError(Error::internal())
    })
}
