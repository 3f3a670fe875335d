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
mod server;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use deltallm_core::{Error, Gateway};
use deltallm_domain::ApiErrorKind;
use http::{StatusCode, header};

pub use error::{AdminError, ProxyError};
pub use server::{DEFAULT_HEADER_READ_TIMEOUT, ServerOptions, serve};

/// The whole application: `/v1`, `/ui/api` and health routes.
pub fn app(gateway: Gateway) -> Router {
    let limit = gateway.settings().max_request_body_bytes;
    let admin = admin::routes()
        .merge(admin_credentials::routes())
        .merge(admin_route_groups::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(admin_error_shape));
    Router::new()
        .merge(openai::routes(limit))
        .merge(admin)
        .merge(health::routes())
        // After every route is in: it applies to the routes present.
        .method_not_allowed_fallback(wrong_method)
        .fallback(unknown_route)
        .with_state(gateway)
}

/// Admin routes answer errors as `{"detail"}` (CONV-1); everything else in the OpenAI shape.
fn is_admin(uri: &http::Uri) -> bool {
    uri.path().starts_with("/ui/")
}

/// No route has this path: the OpenAI API's answer to an unknown URL.
async fn unknown_route(method: http::Method, uri: http::Uri) -> Response {
    if is_admin(&uri) {
        return AdminError(Error::new(ApiErrorKind::NotFound, "Not Found")).into_response();
    }
    ProxyError(Error::new(ApiErrorKind::UnknownRoute, format!("Invalid URL ({method} {})", uri.path()))).into_response()
}

/// The path exists, the method does not (axum adds the `Allow` header).
async fn wrong_method(method: http::Method, uri: http::Uri) -> Response {
    if is_admin(&uri) {
        return AdminError(Error::new(ApiErrorKind::MethodNotAllowed, "Method Not Allowed")).into_response();
    }
    let message = format!("Method {method} is not allowed on {}", uri.path());
    ProxyError(Error::new(ApiErrorKind::MethodNotAllowed, message)).into_response()
}

/// The whole application as one service, for a server: a `POST` to a JSON
/// proxy route (chat, completions, embeddings, images, speech, rerank) is
/// matched on its method and path and handled directly; every other request
/// goes through [`app`]'s router. Those routes carry no layers, so both ways
/// answer alike; the direct way skips the router's matching and its
/// per-request service layers, which cost about as much as parsing the
/// request's JSON.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Gateway,
    router: Router,
}

impl GatewayService {
    /// The service for `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self { router: app(gateway.clone()), gateway }
    }

    /// Both service impls: the JSON proxy routes directly, the rest through the router.
    fn dispatch<B>(&self, req: http::Request<B>) -> ServiceFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if req.method() == http::Method::POST
            && let Some(endpoint) = openai::json_endpoint(req.uri().path())
        {
            let gateway = self.gateway.clone();
            return Box::pin(async move { Ok(openai::proxy_json(gateway, endpoint, req).await) });
        }
        let router = self.router.clone();
        Box::pin(async move { tower::ServiceExt::oneshot(router, req).await })
    }
}

type ServiceFuture = futures_util::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>;

/// For embedders that serve it with axum or tower.
impl tower::Service<axum::extract::Request> for GatewayService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Neither way ever waits: the router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        self.dispatch(req)
    }
}

/// For hyper's connection driver, as [`serve`] uses it: the request body
/// reaches the handler as hyper produced it, with no box around it.
impl hyper::service::Service<http::Request<hyper::body::Incoming>> for GatewayService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.dispatch(req)
    }
}

/// Only the OpenAI-compatible routes, for embedders that mount them in their own router.
pub fn openai_routes(gateway: Gateway) -> Router {
    let limit = gateway.settings().max_request_body_bytes;
    openai::routes(limit).with_state(gateway)
}

/// axum rejects an oversized body with plain text before a handler runs;
/// admin clients get CONV-1's `{"detail"}` shape instead.
async fn admin_error_shape(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        let message = "Request body is too large (general_settings.max_request_body_bytes)";
        return AdminError(Error::new(ApiErrorKind::PayloadTooLarge, message)).into_response();
    }
    response
}
