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
use deltallm_providers::{ChatStream, FormField, Operation, Reply, RequestBody, Usage};
use deltallm_router::{Backoff, Member, Strategy, UnixMs, failover_order, parse_strategy_or_default, select};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::pricing::Units;
use crate::registry::{Entry, ResolvedDeployment};
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
            Endpoint::Completions => Operation::Completions,
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
        let parsed = RequestBody::parse(&body).map_err(|e| Error::invalid(e.message))?;
        let model = match parsed.get("model") {
            None => {
                return Err(Error::invalid("'model' is required").with_param("model").into());
            }
            Some(_) => parsed
                .model()
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| Error::invalid("'model' must be a non-empty string").with_param("model"))?,
        };
        let metadata: Option<Metadata<'_>> = parsed
            .parse_field("metadata")
            .map_err(|_| Error::invalid("'metadata' must be an object").with_param("metadata"))?;
        let tags: Vec<&str> = metadata
            .as_ref()
            .and_then(|m| m.tags.as_ref())
            .map(|t| t.iter().map(|s| s.as_ref()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let stream = parsed.stream();
        if stream && endpoint != Endpoint::ChatCompletions && endpoint != Endpoint::Completions {
            return Err(Error::invalid(format!("stream is not supported on {}", endpoint.path()))
                .with_param("stream")
                .into());
        }
        let spend = SpendContext::new(endpoint.call_type(), &model, stream, &tags);
        let result = match self.resolve_target(&model, endpoint) {
            Ok((_registry, entry)) => {
                self.route_and_call(&entry, endpoint, Payload::Json(&parsed), &tags, started).await
            }
            Err(e) => Err(e.into()),
        };
        self.finish(result, endpoint, Some(&parsed), spend, started)
    }

    /// Proxy a multipart transcription.
    pub async fn proxy_transcription(
        &self,
        model: &str,
        fields: Vec<FormField>,
        started: Instant,
    ) -> Result<ProxyResponse, ProxyError> {
        let endpoint = Endpoint::AudioTranscriptions;
        let spend = SpendContext::new(endpoint.call_type(), model, false, &[]);
        let result = match self.resolve_target(model, endpoint) {
            Ok((_registry, entry)) => self.route_and_call(&entry, endpoint, Payload::Form(&fields), &[], started).await,
            Err(e) => Err(e.into()),
        };
        self.finish(result, endpoint, None, spend, started)
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
            )),
        };
        Ok(ProxyResponse { body, route: served.route, overhead, request_id })
    }

    pub(crate) fn record_spend(&self, record: deltallm_storage::SpendRecord) {
        self.inner.spend.record(record);
    }

    /// RUN-6 selection and RUN-10 failover.
    async fn route_and_call(
        &self,
        entry: &Entry,
        endpoint: Endpoint,
        payload: Payload<'_, '_>,
        tags: &[&str],
        started: Instant,
    ) -> Result<Served, ProxyError> {
        let settings = &self.settings().router;
        let strategy = parse_strategy_or_default(Some(&settings.routing_strategy));
        let now = UnixMs::now();
        let Some(primary) =
            select(&entry.members, strategy, tags, settings.enable_pre_call_checks, now, &mut rand::rng())
        else {
            return Err(Error::new(
                ApiErrorKind::ServiceUnavailable,
                format!("No healthy deployments available for model '{}'", entry.key),
            )
            .with_code("no_healthy_deployments")
            .into());
        };
        let deadline = Duration::try_from_secs_f64(settings.timeout).ok().filter(|d| !d.is_zero());
        let backoff = Backoff::from_retry_after_secs(settings.retry_after);
        let mut upstream_time = Duration::ZERO;
        let mut attempts = 0u32;
        let mut last_error: Option<Error> = None;
        let selected: Arc<str> = entry.members[primary].meta.deployment_id.clone();
        let decision = |served: &Arc<str>, attempts: u32| RouteDecision {
            group: entry.key.clone(),
            strategy,
            selected: selected.clone(),
            served: served.clone(),
            fallback_used: served != &selected,
            attempts,
        };

        for idx in failover_order(&entry.members, primary) {
            let member: &Member<ResolvedDeployment> = &entry.members[idx];
            if idx != primary && (!member.state.is_available(UnixMs::now()) || !member.meta.has_all_tags(tags)) {
                continue;
            }
            let Some(conn) = member.target.connection.as_ref() else {
                continue;
            };
            for attempt in 0..=settings.num_retries {
                if attempt > 0 && !member.state.is_available(UnixMs::now()) {
                    break;
                }
                attempts += 1;
                let guard = member.state.begin_owned();
                let t0 = Instant::now();
                let outcome = match &payload {
                    Payload::Json(body) => self.providers().call(conn, endpoint.operation(), body, deadline).await,
                    Payload::Form(fields) => self.providers().transcribe(conn, fields.to_vec(), deadline).await,
                };
                // A stream counts as served only once its first chunk arrives (RUN-14).
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
                upstream_time += elapsed;
                match outcome {
                    Ok((reply, first_chunk)) => {
                        let tokens = match &reply {
                            Reply::Json { usage: Some(u), .. } => u.total_tokens,
                            _ => 0,
                        };
                        member.state.record_success(elapsed, tokens, UnixMs::now());
                        drop(guard);
                        return Ok(Served {
                            reply,
                            first_chunk,
                            deployment: member.target.clone(),
                            route: decision(&member.meta.deployment_id, attempts),
                            upstream_time,
                        });
                    }
                    Err(e) => {
                        let e = conn.scrub(e);
                        drop(guard);
                        let health_affecting = e.health_affecting();
                        if health_affecting
                            && member.state.record_failure(&e.message, &self.inner.cooldown, UnixMs::now())
                        {
                            tracing::warn!(deployment_id = %member.meta.deployment_id, error = %e.message, "deployment entered cooldown");
                        }
                        tracing::debug!(deployment_id = %member.meta.deployment_id, class = e.class.label(), error = %e.message, attempt, "upstream attempt failed");
                        let client_error = provider_error(&e);
                        if !health_affecting && !e.retryable() {
                            // 4xx other than 429, invalid requests: answer now, no failover (RUN-10).
                            return Err(ProxyError {
                                error: client_error,
                                route: Some(Box::new(decision(&member.meta.deployment_id, attempts))),
                                overhead: started.elapsed().saturating_sub(upstream_time),
                            });
                        }
                        last_error = Some(client_error);
                        if e.retryable() && attempt < settings.num_retries {
                            let mut delay = backoff.delay(attempt, &mut rand::rng());
                            if let Some(after) = e.retry_after {
                                delay = delay.max(after.min(Duration::from_secs(30)));
                            }
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        let error = last_error.unwrap_or_else(|| {
            Error::new(
                ApiErrorKind::ServiceUnavailable,
                format!("No healthy deployments available for model '{}'", entry.key),
            )
            .with_code("no_healthy_deployments")
        });
        Err(ProxyError {
            error,
            route: Some(Box::new(decision(&selected, attempts))),
            overhead: started.elapsed().saturating_sub(upstream_time),
        })
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
