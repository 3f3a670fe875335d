//! OpenAI-compatible `/v1` routes (RUN-2, RUN-4, RUN-14, RUN-15).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use deltallm_core::proxy::{Endpoint, ProxyBody, ProxyError as CoreProxyError, ProxyResponse, RouteDecision};
use deltallm_core::{Error, Gateway};
use deltallm_core::{FormField, FormValue};
use deltallm_domain::ApiErrorKind;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::json;

use crate::auth::presented_key;
use crate::error::ProxyError;

/// `limit` is the request body limit. The JSON routes enforce it themselves
/// while reading the body; only the multipart route needs axum's
/// `DefaultBodyLimit` layer, whose boxed service and per-request extension
/// the hot routes are spared.
pub fn routes(limit: usize) -> Router<Gateway> {
    let mut r = Router::new()
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/models/{*id}", get(get_model));
    for (path, endpoint) in JSON_ROUTES {
        let handler = move |State(gateway): State<Gateway>, req: Request| proxy_json(gateway, endpoint, req);
        r = r.route(&format!("/v1{path}"), post(handler)).route(path, post(handler));
    }
    let multipart = Router::new()
        .route("/v1/audio/transcriptions", post(transcription))
        .route("/audio/transcriptions", post(transcription))
        .layer(DefaultBodyLimit::max(limit));
    r.merge(multipart)
}

/// The JSON proxy routes, each served at `/v1<path>` and at `<path>`.
const JSON_ROUTES: [(&str, Endpoint); 6] = [
    ("/chat/completions", Endpoint::ChatCompletions),
    ("/completions", Endpoint::Completions),
    ("/embeddings", Endpoint::Embeddings),
    ("/images/generations", Endpoint::ImageGenerations),
    ("/audio/speech", Endpoint::AudioSpeech),
    ("/rerank", Endpoint::Rerank),
];

/// The JSON proxy endpoint a `POST` to `path` reaches, as the router would
/// route it ([`JSON_ROUTES`] at `/v1<path>` and `<path>`, exactly).
pub(crate) fn json_endpoint(path: &str) -> Option<Endpoint> {
    let path = path.strip_prefix("/v1").filter(|rest| rest.starts_with('/')).unwrap_or(path);
    JSON_ROUTES.iter().find(|(p, _)| *p == path).map(|(_, endpoint)| *endpoint)
}

/// RUN-2: callable targets visible to the caller, sorted.
async fn list_models(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    if let Err(e) = gw.check_master_key(presented_key(&headers)) {
        return local(started, ProxyError(e).into_response());
    }
    let registry = gw.registry();
    let created = registry.built_at;
    let data: Vec<_> = registry
        .sorted_keys
        .iter()
        .map(|k| json!({"id": k.as_ref(), "object": "model", "created": created, "owned_by": "deltallm"}))
        .collect();
    local(started, Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{id}`: one callable target, as the SDKs' `models.retrieve`
/// expects (ids may contain `/`).
async fn get_model(
    State(gw): State<Gateway>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    if let Err(e) = gw.check_master_key(presented_key(&headers)) {
        return local(started, ProxyError(e).into_response());
    }
    let registry = gw.registry();
    if !registry.entries.contains_key(id.as_str()) {
        let e = Error::not_found(format!("Model '{id}' is not configured")).with_code("model_not_found");
        return local(started, ProxyError(e).into_response());
    }
    let body = json!({"id": id, "object": "model", "created": registry.built_at, "owned_by": "deltallm"});
    local(started, Json(body).into_response())
}

/// A response the gateway produced without any upstream: all of its time is overhead.
pub(crate) fn local(started: Instant, mut response: Response) -> Response {
    put(response.headers_mut(), OVERHEAD, &started.elapsed().as_micros().to_string());
    response
}

pub(crate) const ROUTE_GROUP: HeaderName = HeaderName::from_static("x-deltallm-route-group");
pub(crate) const ROUTE_STRATEGY: HeaderName = HeaderName::from_static("x-deltallm-route-strategy");
pub(crate) const ROUTE_DEPLOYMENT: HeaderName = HeaderName::from_static("x-deltallm-route-deployment");
pub(crate) const ROUTE_FALLBACK: HeaderName = HeaderName::from_static("x-deltallm-route-fallback-used");
pub(crate) const ROUTE_POLICY_VERSION: HeaderName = HeaderName::from_static("x-deltallm-route-policy-version");
pub(crate) const OVERHEAD: HeaderName = HeaderName::from_static("x-deltallm-overhead-us");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-deltallm-request-id");

/// Headers of a proxied response: content type (up to three for streams),
/// five route headers, overhead, request id and content length.
const RESPONSE_HEADERS: usize = 12;

fn put(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Where a proxied answer's gateway headers go: a `HeaderMap` behind hyper,
/// the head's bytes on the lean HTTP/1.1 path. [`route_headers`] is the one
/// list both write.
pub(crate) trait HeaderSink {
    /// A value from operators (group and deployment names): left out when it
    /// cannot travel in a header.
    fn text(&mut self, name: HeaderName, value: &str);
    /// A value the gateway made itself, known to be valid.
    fn constant(&mut self, name: HeaderName, value: &'static str);
    fn number(&mut self, name: HeaderName, value: u64);
}

impl HeaderSink for HeaderMap {
    fn text(&mut self, name: HeaderName, value: &str) {
        put(self, name, value);
    }

    fn constant(&mut self, name: HeaderName, value: &'static str) {
        self.insert(name, HeaderValue::from_static(value));
    }

    fn number(&mut self, name: HeaderName, value: u64) {
        self.insert(name, HeaderValue::from(value));
    }
}

/// The route decision and the gateway's overhead (`x-deltallm-overhead-us`).
pub(crate) fn route_headers(out: &mut impl HeaderSink, route: &RouteDecision, overhead: Duration) {
    out.text(ROUTE_GROUP, &route.group);
    out.constant(ROUTE_STRATEGY, route.strategy.as_str());
    out.text(ROUTE_DEPLOYMENT, &route.served);
    out.constant(ROUTE_FALLBACK, if route.fallback_used { "true" } else { "false" });
    // Only route groups with a published policy have a version to report.
    if let Some(v) = route.policy_version {
        out.number(ROUTE_POLICY_VERSION, u64::from(v));
    }
    out.number(OVERHEAD, overhead_us(overhead));
}

fn overhead_us(overhead: Duration) -> u64 {
    u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn render(result: Result<ProxyResponse, CoreProxyError>) -> Response {
    match result {
        Ok(resp) => {
            let mut out = match resp.body {
                ProxyBody::Json(bytes) => {
                    let mut r = proxied(Body::from(bytes));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                ProxyBody::Binary { content_type, body } => {
                    let mut r = proxied(Body::from(body));
                    put(r.headers_mut(), header::CONTENT_TYPE, &content_type);
                    r
                }
                ProxyBody::Stream(stream) => {
                    let mut r = proxied(Body::from_stream(stream.map(Ok::<_, Infallible>)));
                    let h = r.headers_mut();
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
                    r
                }
            };
            route_headers(out.headers_mut(), &resp.route, resp.overhead);
            // The id is moved into the header, not copied.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(resp.request_id)) {
                out.headers_mut().insert(REQUEST_ID, v);
            }
            out
        }
        Err(e) => {
            let mut out = ProxyError(e.error).into_response();
            match &e.route {
                Some(route) => route_headers(out.headers_mut(), route, e.overhead),
                None => out.headers_mut().number(OVERHEAD, overhead_us(e.overhead)),
            }
            out
        }
    }
}

/// A response with room for all of its headers up front: the default table
/// holds six and would be rebuilt halfway through the route headers.
fn proxied(body: Body) -> Response {
    let mut response = Response::new(body);
    *response.headers_mut() = HeaderMap::with_capacity(RESPONSE_HEADERS);
    response
}

pub(crate) fn too_large(limit: usize) -> ProxyError {
    ProxyError(Error::new(
        ApiErrorKind::PayloadTooLarge,
        format!("Request body exceeds the {limit}-byte limit (general_settings.max_request_body_bytes)"),
    ))
}

/// A JSON proxy route's handler; [`crate::GatewayService`] calls it without
/// the router, with the body type of whichever server drives it.
pub(crate) async fn proxy_json<B>(gw: Gateway, endpoint: Endpoint, req: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let started = Instant::now();
    if let Err(e) = gw.check_master_key(presented_key(req.headers())) {
        return local(started, ProxyError(e).into_response());
    }
    let limit = gw.settings().max_request_body_bytes;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return local(started, too_large(limit).into_response());
    }
    let body: Bytes = match http_body_util::BodyExt::collect(http_body_util::Limited::new(req.into_body(), limit)).await
    {
        Ok(collected) => unshare_small(collected.to_bytes()),
        Err(_) => return local(started, too_large(limit).into_response()),
    };
    render(gw.proxy_json(endpoint, body, started).await)
}

/// Bodies up to this size are copied out of the connection's read buffer.
pub(crate) const UNSHARE_BELOW: usize = 16 * 1024;

/// A small body arrives as a slice of hyper's per-connection read buffer.
/// Held for the whole upstream call, it keeps that buffer shared, and
/// hyper's keep-alive read during the call then allocates a fresh 8 KiB
/// buffer for every request: with jemalloc's one-region slabs for that size,
/// a far higher cost than copying a few hundred bytes into a buffer of our own.
fn unshare_small(body: Bytes) -> Bytes {
    if body.len() < UNSHARE_BELOW { Bytes::copy_from_slice(&body) } else { body }
}

async fn transcription(State(gw): State<Gateway>, req: Request) -> Response {
    let started = Instant::now();
    if let Err(e) = gw.check_master_key(presented_key(req.headers())) {
        return local(started, ProxyError(e).into_response());
    }
    match read_transcription(&gw, req).await {
        Ok((model, fields)) => render(gw.proxy_transcription(&model, fields, started).await),
        Err(e) => local(started, e.into_response()),
    }
}

/// The multipart form of a transcription request: its `model` and every field.
async fn read_transcription(gw: &Gateway, req: Request) -> Result<(String, Vec<FormField>), ProxyError> {
    let invalid = |m: String| Err(ProxyError(Error::invalid(m)));
    let mut multipart = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(too_large(gw.settings().max_request_body_bytes));
        }
        Err(e) => {
            return invalid(format!("Expected a multipart/form-data body: {}", e.body_text()));
        }
    };
    // The limit can be reached between fields or inside one.
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(gw.settings().max_request_body_bytes)
        } else {
            ProxyError(Error::invalid(format!("Malformed multipart body: {}", e.body_text())))
        }
    };
    let mut fields = Vec::new();
    let mut model = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(malformed(e)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let data = field.bytes().await.map_err(malformed)?;
        let value = if file_name.is_some() {
            FormValue::File { file_name, content_type, data }
        } else {
            let text = String::from_utf8_lossy(&data).into_owned();
            if name == "model" {
                model = Some(text.trim().to_owned());
            }
            FormValue::Text(text)
        };
        fields.push(FormField { name, value });
    }
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return Err(ProxyError(Error::invalid("'model' is required").with_param("model")));
    };
    if !fields.iter().any(|f| f.name == "file") {
        return Err(ProxyError(Error::invalid("'file' is required").with_param("file")));
    }
    Ok((model, fields))
}
