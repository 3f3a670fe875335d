//! The request pipeline of the OpenAI-compatible API (RUN-4..6, RUN-10..18):
//! resolve the model through the registry snapshot (never the database),
//! select a deployment, call it with failover and retries, record health,
//! usage and spend. Streaming responses are forwarded chunk by chunk.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deltallm_domain::ApiErrorKind;
use deltallm_domain::deployment::Mode;
use deltallm_domain::policy::RetryClass;
use deltallm_providers::{ChatStream, ErrorClass, FormField, Operation, Reply, RequestBody, Usage};
use deltallm_router::{Backoff, Member, Strategy, UnixMs, select};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::health::FallbackEvent;
use crate::pricing::Units;
use crate::registry::{Entry, Registry, ResolvedDeployment};
use crate::spend::SpendContext;
use crate::{Error, Gateway, Result};

/// The OpenAI endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    ChatCompletions,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/images/generations`.
    ImageGenerations,
    /// `/v1/audio/speech`.
    AudioSpeech,
    /// `/v1/audio/transcriptions`.
    AudioTranscriptions,
    /// `/v1/rerank`.
    Rerank,
}

impl Endpoint {
    fn operation(self) -> Operation {
        match self {
            Endpoint::ChatCompletions => Operation::Chat,
            // RUN-4: served through chat; see `deltallm_providers::completions`.
            Endpoint::Completions => Operation::Chat,
            Endpoint::Embeddings => Operation::Embeddings,
            Endpoint::ImageGenerations => Operation::ImageGeneration,
            Endpoint::AudioSpeech => Operation::AudioSpeech,
            Endpoint::AudioTranscriptions => Operation::AudioTranscription,
            Endpoint::Rerank => Operation::Rerank,
        }
    }

    /// The workload mode a target must have to serve this endpoint (RUN-4).
    pub fn mode(self) -> Mode {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions => Mode::Chat,
            Endpoint::Embeddings => Mode::Embedding,
            Endpoint::ImageGenerations => Mode::ImageGeneration,
            Endpoint::AudioSpeech => Mode::AudioSpeech,
            Endpoint::AudioTranscriptions => Mode::AudioTranscription,
            Endpoint::Rerank => Mode::Rerank,
        }
    }

    /// SPEND-3 `call_type`.
    pub fn call_type(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completion",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embedding",
            Endpoint::ImageGenerations => "image_generation",
            Endpoint::AudioSpeech => "speech",
            Endpoint::AudioTranscriptions => "transcription",
            Endpoint::Rerank => "rerank",
        }
    }

    /// Public path, for messages.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::ImageGenerations => "/v1/images/generations",
            Endpoint::AudioSpeech => "/v1/audio/speech",
            Endpoint::AudioTranscriptions => "/v1/audio/transcriptions",
            Endpoint::Rerank => "/v1/rerank",
        }
    }
}

/// RUN-6/RUN-15 route decision, reported in headers and spend metadata.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// The callable key that was resolved.
    pub group: Arc<str>,
    /// Strategy used.
    pub strategy: Strategy,
    /// First selected deployment.
    pub selected: Arc<str>,
    /// Deployment that served the response.
    pub served: Arc<str>,
    /// Whether a deployment other than the selected one served.
    pub fallback_used: bool,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Published route-group policy version in force, if any (RUN-15).
    pub policy_version: Option<u32>,
    /// The decision as `spend_logs.metadata` JSON (SPEND-3). For a request
    /// served by its first pick on the first attempt this is the entry's
    /// text, written once when the registry was built.
    pub spend_metadata: Arc<str>,
}

/// What the HTTP layer sends back.
pub enum ProxyBody {
    /// JSON response (already OpenAI-shaped).
    Json(Bytes),
    /// Binary response (speech).
    Binary {
        /// Upstream content type.
        content_type: String,
        /// Bytes.
        body: Bytes,
    },
    /// SSE stream of framed `data: ...\n\n` events ending with `data: [DONE]`.
    Stream(futures_util::stream::BoxStream<'static, Bytes>),
}

/// A successful proxied response.
pub struct ProxyResponse {
    /// Body.
    pub body: ProxyBody,
    /// Route decision.
    pub route: RouteDecision,
    /// Time the gateway itself added (total minus upstream time) until the response head.
    pub overhead: Duration,
    /// Gateway request id.
    pub request_id: String,
}

/// A failed request plus the route decision, when one was made.
#[derive(Debug)]
pub struct ProxyError {
    /// Client-facing error.
    pub error: Error,
    /// Route decision, when a deployment was selected (boxed: errors stay small).
    pub route: Option<Box<RouteDecision>>,
    /// Time the gateway itself added.
    pub overhead: Duration,
}

impl From<Error> for ProxyError {
    fn from(error: Error) -> Self {
        Self { error, route: None, overhead: Duration::ZERO }
    }
}

/// A request's spend context while its upstream call runs. The HTTP layer
/// drops the request's future when the client closes its connection; the
/// request then still leaves its one spend event (SPEND-3), as
/// `client_disconnected`, instead of none.
struct Abandoned<'g> {
    gateway: &'g Gateway,
    spend: Option<SpendContext>,
    started: Instant,
}

impl<'g> Abandoned<'g> {
    fn watch(gateway: &'g Gateway, spend: SpendContext, started: Instant) -> Self {
        Self { gateway, spend: Some(spend), started }
    }

    /// The call came back: its outcome is recorded by the caller.
    fn answered(mut self) -> SpendContext {
        match self.spend.take() {
            Some(spend) => spend,
            // Only `answered` takes it, and it consumes the guard.
            None => unreachable!("spend context taken twice"),
        }
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(spend) = self.spend.take() {
            tracing::debug!(request_id = %spend.request_id, "client left before the answer; upstream call cancelled");
            self.gateway.record_spend(spend.abandoned(self.started));
        }
    }
}

/// What is sent upstream.
enum Payload<'b, 'a> {
    Json(&'b RequestBody<'a>),
    Form(&'b [FormField]),
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    tags: Option<Vec<Cow<'a, str>>>,
}

fn provider_error(e: &deltallm_providers::Error) -> Error {
    // Plain upstream 4xx keep their OpenAI `code`/`param` so SDK users see what the upstream said.
    let fields = e.upstream_fields.as_deref();
    Error {
        kind: e.api_kind(),
        message: e.client_message(),
        code: fields.and_then(|f| f.code.clone()).map(Cow::Owned),
        param: fields.and_then(|f| f.param.clone()).map(Cow::Owned),
        retry_after: e.retry_after,
    }
}

/// Units consumed, from the upstream usage and the request.
fn units_of(endpoint: Endpoint, usage: Option<&Usage>, body: Option<&RequestBody<'_>>) -> Units {
    let mut u = Units::default();
    if let Some(us) = usage {
        u.prompt_tokens = us.prompt_tokens;
        u.completion_tokens = us.completion_tokens;
        u.prompt_tokens_cached = us.prompt_tokens_cached.unwrap_or(0);
        u.images = us.images.unwrap_or(0);
        u.characters = us.characters.unwrap_or(0);
        u.seconds = us.seconds.unwrap_or(0.0);
    }
    if endpoint == Endpoint::AudioSpeech
        && u.characters == 0
        && let Some(Ok(Some(input))) = body.map(|b| b.parse_field::<Cow<'_, str>>("input"))
    {
        u.characters = input.chars().count() as u64;
    }
    u
}

/// The fields the gateway itself reads from a JSON body: `model`,
/// `metadata.tags` and `stream`, checked for type.
type Checked<'a> = (Cow<'a, str>, Vec<Cow<'a, str>>, bool);

fn check_request<'a>(parsed: &RequestBody<'a>, endpoint: Endpoint) -> Result<Checked<'a>> {
    let model = match parsed.get("model") {
        None => return Err(Error::invalid("'model' is required").with_param("model")),
        Some(_) => parsed
            .model()
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| Error::invalid("'model' must be a non-empty string").with_param("model"))?,
    };
    let metadata: Option<Metadata<'a>> = parsed
        .parse_field("metadata")
        .map_err(|_| Error::invalid("'metadata' must be an object").with_param("metadata"))?;
    let tags: Vec<Cow<'a, str>> =
        metadata.and_then(|m| m.tags).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect();
    let stream = parsed.stream();
    if stream && endpoint != Endpoint::ChatCompletions && endpoint != Endpoint::Completions {
        return Err(Error::invalid(format!("stream is not supported on {}", endpoint.path())).with_param("stream"));
    }
    Ok((model, tags, stream))
}

impl Gateway {
    fn resolve_target(&self, model: &str, endpoint: Endpoint) -> Result<(Arc<crate::registry::Registry>, Arc<Entry>)> {
        let registry = self.registry();
        let group = self.settings().router.model_group_alias.get(model).map_or(model, String::as_str);
        let Some(entry) = registry.entries.get(group).cloned() else {
            return Err(Error::not_found(format!("Model '{model}' is not configured")).with_code("model_not_found"));
        };
        let mode = entry.mode();
        if mode != endpoint.mode() {
            let article = if mode.as_str().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            return Err(Error::invalid(format!(
                "Model '{model}' is {article} {mode} model and cannot serve {}",
                endpoint.path()
            ))
            .with_param("model"));
        }
        Ok((registry, entry))
    }

    /// Proxy a JSON request (`body` is the client's raw JSON).
    pub async fn proxy_json(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        started: Instant,
    ) -> Result<ProxyResponse, ProxyError> {
        let parsed = match RequestBody::parse(&body) {
            Ok(p) => p,
            Err(e) => return self.rejected(endpoint, "", Error::invalid(e.message), started),
        };
        let (model, tags, stream) = match check_request(&parsed, endpoint) {
            Ok(checked) => checked,
            Err(e) => return self.rejected(endpoint, "", e, started),
        };
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        // Legacy completions go upstream as chat requests (RUN-4).
        let converted = match endpoint {
            Endpoint::Completions => match deltallm_providers::completions::chat_request(&parsed) {
                Ok(chat) => Some(chat),
                Err(e) => return self.rejected(endpoint, &model, provider_error(&e), started),
            },
            _ => None,
        };
        let chat_body;
        let upstream_body = match &converted {
            Some(chat) => {
                chat_body = RequestBody::parse(chat).map_err(|e| Error::invalid(e.message))?;
                &chat_body
            }
            None => &parsed,
        };
        let pending = Abandoned::watch(self, SpendContext::new(endpoint.call_type(), &model, stream, &tags), started);
        let result = match self.resolve_target(&model, endpoint) {
            Ok((registry, entry)) => {
                self.route_and_call(&registry, &entry, endpoint, Payload::Json(upstream_body), &tags, started).await
            }
            Err(e) => Err(e.into()),
        };
        self.finish(result, endpoint, Some(&parsed), pending.answered(), started)
    }

    /// A request refused before routing still leaves its spend event
    /// (SPEND-3: one per request), with cost 0 and the model if it was readable.
    fn rejected(
        &self,
        endpoint: Endpoint,
        model: &str,
        error: Error,
        started: Instant,
    ) -> Result<ProxyResponse, ProxyError> {
        let spend = SpendContext::new(endpoint.call_type(), model, false, &[]);
        let error = ProxyError { error, route: None, overhead: started.elapsed() };
        self.record_spend(spend.failure(&error, None, started));
        Err(error)
    }

    /// Proxy a multipart transcription.
    pub async fn proxy_transcription(
        &self,
        model: &str,
        fields: Vec<FormField>,
        started: Instant,
    ) -> Result<ProxyResponse, ProxyError> {
        let endpoint = Endpoint::AudioTranscriptions;
        let pending = Abandoned::watch(self, SpendContext::new(endpoint.call_type(), model, false, &[]), started);
        let result = match self.resolve_target(model, endpoint) {
            Ok((registry, entry)) => {
                self.route_and_call(&registry, &entry, endpoint, Payload::Form(&fields), &[], started).await
            }
            Err(e) => Err(e.into()),
        };
        self.finish(result, endpoint, None, pending.answered(), started)
    }

    fn finish(
        &self,
        result: Result<Served, ProxyError>,
        endpoint: Endpoint,
        body: Option<&RequestBody<'_>>,
        spend: SpendContext,
        started: Instant,
    ) -> Result<ProxyResponse, ProxyError> {
        let served = match result {
            Ok(s) => s,
            Err(e) => {
                let provider = e
                    .route
                    .as_ref()
                    .and_then(|r| self.registry().deployments.get(r.served.as_ref()).map(|d| d.provider.clone()));
                self.record_spend(spend.failure(&e, provider, started));
                return Err(e);
            }
        };
        let overhead = started.elapsed().saturating_sub(served.upstream_time);
        let request_id = spend.request_id.clone();
        let deployment = served.deployment.clone();
        let body = match served.reply {
            Reply::Json { body: bytes, usage } => {
                let units = units_of(endpoint, usage.as_ref(), body);
                let bytes = match endpoint {
                    Endpoint::Completions => match deltallm_providers::completions::completion_response(&bytes) {
                        Ok(b) => b,
                        Err(e) => {
                            let e = ProxyError {
                                error: provider_error(&e),
                                route: Some(Box::new(served.route)),
                                overhead: started.elapsed().saturating_sub(served.upstream_time),
                            };
                            self.record_spend(spend.failure(&e, Some(deployment.provider.clone()), started));
                            return Err(e);
                        }
                    },
                    _ => bytes,
                };
                self.record_spend(spend.success(&deployment, endpoint, &units, &served.route, started));
                ProxyBody::Json(bytes)
            }
            Reply::Binary { content_type, body: bytes } => {
                let units = units_of(endpoint, None, body);
                self.record_spend(spend.success(&deployment, endpoint, &units, &served.route, started));
                ProxyBody::Binary { content_type, body: bytes }
            }
            Reply::Stream(stream) => ProxyBody::Stream(crate::streaming::framed(
                self.clone(),
                served.first_chunk.unwrap_or_default(),
                stream,
                deployment,
                spend,
                served.route.clone(),
                started,
                (endpoint == Endpoint::Completions).then_some(deltallm_providers::completions::completion_chunk),
            )),
        };
        Ok(ProxyResponse { body, route: served.route, overhead, request_id })
    }

    pub(crate) fn record_spend(&self, record: deltallm_storage::SpendRecord) {
        self.inner.spend.record(record);
    }

    /// RUN-6 selection and RUN-10 failover over `entry` (from `registry`).
    async fn route_and_call(
        &self,
        registry: &Registry,
        entry: &Entry,
        endpoint: Endpoint,
        payload: Payload<'_, '_>,
        tags: &[&str],
        started: Instant,
    ) -> Result<Served, ProxyError> {
        let settings = self.settings();
        let router = &settings.router;
        let routing = &entry.routing;
        let strategy = routing.strategy;
        let now = UnixMs::now();
        let Some(primary) =
            select(&entry.members, strategy, tags, router.enable_pre_call_checks, now, &mut rand::rng())
        else {
            return Err(no_healthy(&entry.key).into());
        };
        let deadline = routing
            .attempt_timeout
            .or_else(|| Duration::try_from_secs_f64(router.timeout).ok())
            .filter(|d| !d.is_zero());
        let retries = routing.num_retries.unwrap_or(router.num_retries);
        let backoff = Backoff::from_retry_after_secs(router.retry_after);
        let mut run = Run {
            gateway: self,
            entry,
            strategy,
            selected: entry.members[primary].meta.deployment_id.clone(),
            attempts: 0,
            upstream_time: Duration::ZERO,
            started,
            pending: None,
        };
        let mut last_error: Option<Error> = None;
        // Deployment ids already tried and failed; only filled on the failure path.
        let mut failed: Vec<Arc<str>> = Vec::new();

        let groups = settings.fallbacks.get(entry.key.as_ref()).map_or(&[][..], Vec::as_slice);
        for (is_primary, member) in Chain::new(registry, Some((entry, primary)), groups, entry.mode) {
            if !is_primary
                && (!member.state.is_available(UnixMs::now())
                    || !member.meta.has_all_tags(tags)
                    || failed.contains(&member.meta.deployment_id))
            {
                continue;
            }
            let Some(conn) = member.target.connection.as_ref() else {
                continue;
            };
            for attempt in 0..=retries {
                if attempt > 0 && !member.state.is_available(UnixMs::now()) {
                    break;
                }
                let e = match run.attempt(member, conn, endpoint, &payload, deadline).await {
                    Ok(served) => return Ok(served),
                    Err(e) => e,
                };
                let client_error = provider_error(&e);
                if matches!(e.class, ErrorClass::ContextWindowExceeded | ErrorClass::ContentPolicyViolation) {
                    // RUN-10: classified fallbacks get one try each; without them the error is the client's.
                    let (map, reason) = if e.class == ErrorClass::ContextWindowExceeded {
                        (&settings.context_window_fallbacks, "context_window_fallback")
                    } else {
                        (&settings.content_policy_fallbacks, "content_policy_fallback")
                    };
                    let Some(groups) = map.get(entry.key.as_ref()).filter(|g| !g.is_empty()) else {
                        return Err(run.fail(client_error, &member.meta.deployment_id));
                    };
                    run.pend(&member.meta.deployment_id, &e, reason);
                    return run
                        .classified_fallbacks(registry, groups, tags, endpoint, &payload, deadline, client_error)
                        .await;
                }
                if !e.health_affecting() && !e.retryable() {
                    // 4xx other than 429, invalid requests: answer now, no failover (RUN-10).
                    return Err(run.fail(client_error, &member.meta.deployment_id));
                }
                last_error = Some(client_error);
                if retryable(&e, routing.retryable_mask) && attempt < retries {
                    let mut delay = backoff.delay(attempt, &mut rand::rng());
                    if let Some(after) = e.retry_after {
                        delay = delay.max(after.min(MAX_RETRY_AFTER));
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
                run.pend(&member.meta.deployment_id, &e, "failover");
                failed.push(member.meta.deployment_id.clone());
                break;
            }
        }
        run.flush_pending(None);
        let error = last_error.unwrap_or_else(|| no_healthy(&entry.key));
        let selected = run.selected.clone();
        Err(run.fail(error, &selected))
    }
}

/// RUN-10 failover chain: the primary, the entry's other members in
/// registry order, then the members of each fallback group's entry (same
/// mode only). A named iterator rather than adapter closures, so the
/// request future that holds it across awaits stays `Send`.
struct Chain<'r> {
    registry: &'r Registry,
    own: Option<(&'r Entry, usize)>,
    groups: &'r [String],
    mode: Mode,
    /// Position in the own entry's failover order.
    own_pos: usize,
    /// Current fallback group and member index inside it.
    group: usize,
    member: usize,
}

impl<'r> Chain<'r> {
    fn new(registry: &'r Registry, own: Option<(&'r Entry, usize)>, groups: &'r [String], mode: Mode) -> Self {
        Self { registry, own, groups, mode, own_pos: 0, group: 0, member: 0 }
    }
}

impl<'r> Iterator for Chain<'r> {
    /// `(is_primary, member)`.
    type Item = (bool, &'r Member<ResolvedDeployment>);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((entry, primary)) = self.own {
            let n = entry.members.len();
            if self.own_pos < n {
                // Order: primary first, then 0..n without the primary.
                let pos = self.own_pos;
                self.own_pos += 1;
                let idx = if pos == 0 && primary < n {
                    primary
                } else {
                    let k = if primary < n { pos - 1 } else { pos };
                    if primary < n && k >= primary { k + 1 } else { k }
                };
                return Some((idx == primary, &entry.members[idx]));
            }
        }
        while let Some(key) = self.groups.get(self.group) {
            match self.registry.entries.get(key.as_str()).filter(|e| e.mode == self.mode) {
                Some(e) if self.member < e.members.len() => {
                    self.member += 1;
                    return Some((false, &e.members[self.member - 1]));
                }
                _ => {
                    self.group += 1;
                    self.member = 0;
                }
            }
        }
        None
    }
}

/// Longest upstream `Retry-After` the gateway sleeps for before a retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

fn no_healthy(key: &str) -> Error {
    Error::new(ApiErrorKind::ServiceUnavailable, format!("No healthy deployments available for model '{key}'"))
        .with_code("no_healthy_deployments")
}

/// RUN-11 retry decision: the policy's class set when it has one, else the defaults.
fn retryable(e: &deltallm_providers::Error, mask: Option<u8>) -> bool {
    let Some(mask) = mask else { return e.retryable() };
    let class = match e.class {
        ErrorClass::Timeout => RetryClass::Timeout,
        ErrorClass::RateLimit => RetryClass::RateLimit,
        ErrorClass::ContextWindowExceeded => RetryClass::ContextWindowExceeded,
        ErrorClass::ContentPolicyViolation => RetryClass::ContentPolicyViolation,
        _ => RetryClass::Generic,
    };
    mask & class.bit() != 0
}

/// A failed deployment whose failover event waits for the next target.
struct Pending {
    from: Arc<str>,
    reason: &'static str,
    class: &'static str,
    status: Option<u16>,
    error: String,
}

/// Book-keeping of one request's attempts.
struct Run<'g> {
    gateway: &'g Gateway,
    entry: &'g Entry,
    strategy: Strategy,
    selected: Arc<str>,
    attempts: u32,
    upstream_time: Duration,
    started: Instant,
    pending: Option<Pending>,
}

impl Run<'_> {
    fn decision(&self, served: &Arc<str>) -> RouteDecision {
        let fallback_used = served != &self.selected;
        let first_try = (self.attempts == 1 && !fallback_used).then(|| self.entry.first_try_metadata(served)).flatten();
        let mut decision = RouteDecision {
            group: self.entry.key.clone(),
            strategy: self.strategy,
            selected: self.selected.clone(),
            served: served.clone(),
            fallback_used,
            attempts: self.attempts,
            policy_version: self.entry.routing.policy_version,
            spend_metadata: crate::spend::empty_metadata(),
        };
        decision.spend_metadata = first_try.unwrap_or_else(|| crate::spend::route_metadata(&decision).into());
        decision
    }

    fn fail(&self, error: Error, served: &Arc<str>) -> ProxyError {
        ProxyError {
            error,
            route: Some(Box::new(self.decision(served))),
            overhead: self.started.elapsed().saturating_sub(self.upstream_time),
        }
    }

    fn pend(&mut self, from: &Arc<str>, e: &deltallm_providers::Error, reason: &'static str) {
        self.pending = Some(Pending {
            from: from.clone(),
            reason,
            class: e.class.label(),
            status: e.status,
            error: e.client_message().chars().take(200).collect(),
        });
    }

    fn flush_pending(&mut self, to: Option<&Arc<str>>) {
        if let Some(p) = self.pending.take() {
            self.gateway.record_fallback(FallbackEvent {
                seq: 0,
                at: chrono::Utc::now(),
                group: self.entry.key.to_string(),
                from_deployment: p.from.to_string(),
                to_deployment: to.map(|t| t.to_string()),
                reason: if to.is_none() { "exhausted" } else { p.reason },
                error_class: p.class,
                status_code: p.status,
                error: p.error,
            });
        }
    }

    /// One upstream attempt on `member`, recording health. A stream counts
    /// as served only once its first chunk arrives (RUN-14).
    async fn attempt(
        &mut self,
        member: &Member<ResolvedDeployment>,
        conn: &deltallm_providers::Connection,
        endpoint: Endpoint,
        payload: &Payload<'_, '_>,
        deadline: Option<Duration>,
    ) -> Result<Served, deltallm_providers::Error> {
        self.flush_pending(Some(&member.meta.deployment_id));
        self.attempts += 1;
        let providers = self.gateway.providers();
        let guard = member.state.begin_owned();
        let t0 = Instant::now();
        let outcome = match payload {
            Payload::Json(body) => providers.call(conn, endpoint.operation(), body, deadline).await,
            Payload::Form(fields) => providers.transcribe(conn, fields.to_vec(), deadline).await,
        };
        let outcome = match outcome {
            Ok(Reply::Stream(mut s)) => {
                match first_chunk(&mut s, deadline.map(|d| d.saturating_sub(t0.elapsed()))).await {
                    Ok(first) => Ok((Reply::Stream(s), Some(first))),
                    Err(e) => Err(e),
                }
            }
            Ok(other) => Ok((other, None)),
            Err(e) => Err(e),
        };
        let elapsed = t0.elapsed();
        self.upstream_time += elapsed;
        drop(guard);
        match outcome {
            Ok((reply, first_chunk)) => {
                let tokens = match &reply {
                    Reply::Json { usage: Some(u), .. } => u.total_tokens,
                    _ => 0,
                };
                member.state.record_success(elapsed, tokens, UnixMs::now());
                Ok(Served {
                    reply,
                    first_chunk,
                    deployment: member.target.clone(),
                    route: self.decision(&member.meta.deployment_id),
                    upstream_time: self.upstream_time,
                })
            }
            Err(e) => {
                let e = conn.scrub(e);
                let id = &member.meta.deployment_id;
                if e.health_affecting()
                    && member.state.record_failure(&e.message, &self.gateway.inner.cooldown, UnixMs::now())
                {
                    tracing::warn!(deployment_id = %id, error = %e.message, "deployment entered cooldown");
                }
                tracing::debug!(deployment_id = %id, class = e.class.label(), error = %e.message, "upstream attempt failed");
                Err(e)
            }
        }
    }

    /// RUN-10 context-window / content-policy fallbacks: each deployment of
    /// the configured groups once, in order; the first success serves.
    #[allow(clippy::too_many_arguments)]
    async fn classified_fallbacks(
        &mut self,
        registry: &Registry,
        groups: &[String],
        tags: &[&str],
        endpoint: Endpoint,
        payload: &Payload<'_, '_>,
        deadline: Option<Duration>,
        first_error: Error,
    ) -> Result<Served, ProxyError> {
        let mut last = first_error;
        let mut tried: Vec<Arc<str>> = vec![self.selected.clone()];
        for (_, member) in Chain::new(registry, None, groups, self.entry.mode) {
            let id = &member.meta.deployment_id;
            if tried.contains(id) || !member.state.is_available(UnixMs::now()) || !member.meta.has_all_tags(tags) {
                continue;
            }
            let Some(conn) = member.target.connection.as_ref() else { continue };
            tried.push(id.clone());
            match self.attempt(member, conn, endpoint, payload, deadline).await {
                Ok(served) => return Ok(served),
                Err(e) => {
                    let reason = self.pending_reason();
                    self.pend(id, &e, reason);
                    last = provider_error(&e);
                }
            }
        }
        self.flush_pending(None);
        let selected = self.selected.clone();
        Err(self.fail(last, &selected))
    }

    fn pending_reason(&self) -> &'static str {
        self.pending.as_ref().map_or("failover", |p| p.reason)
    }
}

/// Wait for the first chunk of a stream; an error or an empty stream is a
/// (health-affecting) failure that may still fail over.
async fn first_chunk(s: &mut ChatStream, deadline: Option<Duration>) -> Result<Bytes, deltallm_providers::Error> {
    let next = async {
        match s.next().await {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(e),
            None => Err(deltallm_providers::Error::transport("upstream stream ended before the first chunk")),
        }
    };
    match deadline {
        Some(d) => tokio::time::timeout(d, next).await.unwrap_or_else(|_| {
            Err(deltallm_providers::Error::timeout("upstream did not start streaming before the deadline"))
        }),
        None => next.await,
    }
}

/// A served attempt.
struct Served {
    reply: Reply,
    first_chunk: Option<Bytes>,
    deployment: Arc<ResolvedDeployment>,
    route: RouteDecision,
    upstream_time: Duration,
}
