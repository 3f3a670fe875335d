//! The shared HTTP client and one upstream attempt per call: build the
//! request for the connection's wire family, send it under the attempt
//! deadline, and map the outcome to a [`Reply`] or a classified [`Error`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deltallm_domain::provider::WireFamily;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::header::CONTENT_TYPE;
use reqwest::multipart::{Form, Part};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::anthropic::{self, AnthropicSse};
use crate::body::RequestBody;
use crate::connection::Connection;
use crate::direct;
use crate::error::{Error, Result};
use crate::operation::Operation;
use crate::sse::{ChatStream, OpenAiSse};
use crate::usage::{self, Usage};
use crate::{gemini, openai};

/// Upstream HTTP settings (RUN-17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout used when a deployment sets no `timeout`: the whole
    /// exchange for JSON calls, the gap between chunks for streams.
    pub read_timeout: Duration,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Send JSON calls with the direct client (see [`Providers`]); `false`
    /// sends everything through reqwest.
    pub direct_client: bool,
    /// PEM certificates trusted for HTTPS upstreams besides the system's
    /// roots (a private CA in front of self-hosted servers).
    pub extra_root_certs_pem: Option<Vec<u8>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            pool_max_idle_per_host: 256,
            pool_idle_timeout: Duration::from_secs(90),
            direct_client: true,
            extra_root_certs_pem: None,
        }
    }
}

/// `User-Agent` of every upstream call, whichever client sends it.
pub(crate) const USER_AGENT_VALUE: &str = concat!("deltallm/", env!("CARGO_PKG_VERSION"));

/// The provider adapters over shared connection pools. Cheap to clone.
///
/// Chat, completions and other JSON calls go through the direct HTTP/1.1
/// client of `direct.rs`, over TCP or TLS, which runs the exchange inside
/// the request's task (see there for why). Multipart and health probes use
/// reqwest. When a proxy is configured in the environment (`HTTP_PROXY`,
/// `HTTPS_PROXY`, `ALL_PROXY`), the scheme it covers goes through reqwest,
/// which honours it.
#[derive(Debug, Clone)]
pub struct Providers {
    client: reqwest::Client,
    /// The direct client's settings; `None` when it is off or proxies cover
    /// both schemes.
    direct: Option<direct::Settings>,
    read_timeout: Duration,
}

/// What a successful upstream call returned, already in OpenAI shape.
#[derive(Debug)]
pub enum Reply {
    /// Non-streaming JSON and the usage parsed from it.
    Json {
        /// Response body.
        body: Bytes,
        /// The body's `usage`, if any.
        usage: Option<Usage>,
    },
    /// A non-JSON body (speech audio, text transcripts).
    Binary {
        /// Upstream `Content-Type`.
        content_type: String,
        /// Response body.
        body: Bytes,
    },
    /// Chat-completion chunk payloads, forwarded as they arrive.
    Stream(ChatStream),
}

/// A successful health probe (RUN-22).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Upstream status (`None` for the credential-only Bedrock check).
    pub status: Option<u16>,
    /// How long the probe took.
    pub latency: Duration,
    /// Human-readable outcome.
    pub message: String,
}

/// One field of a multipart transcription form, as received from the client.
#[derive(Debug, Clone)]
pub struct FormField {
    /// Field name (`file`, `model`, `language`, ...).
    pub name: String,
    /// Field value.
    pub value: FormValue,
}

/// A multipart field value.
#[derive(Debug, Clone)]
pub enum FormValue {
    /// A text field.
    Text(String),
    /// A file field.
    File {
        /// Client file name.
        file_name: Option<String>,
        /// Client content type.
        content_type: Option<String>,
        /// File bytes.
        data: Bytes,
    },
}

/// Which response translation a request needs.
#[derive(Clone, Copy)]
enum Wire {
    /// `hide_usage_chunk`: the gateway asked for a usage chunk the client did not.
    OpenAi {
        hide_usage_chunk: bool,
    },
    Anthropic,
    Gemini,
}

impl Providers {
    /// Build the shared client.
    pub fn new(settings: &HttpSettings) -> Result<Self> {
        let mut builder = reqwest::Client::builder();
        let mut extra_roots = Vec::new();
        if let Some(pem) = &settings.extra_root_certs_pem {
            // Parsed once; both clients get the same certificates.
            extra_roots = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::transport(format!("extra upstream CA certificates: {e}")))?;
            if extra_roots.is_empty() {
                return Err(Error::transport("extra upstream CA certificates: no PEM certificate found"));
            }
            let certs = extra_roots
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::transport(format!("extra upstream CA certificates: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(settings.pool_idle_timeout)
            // Provider APIs do not redirect; following one would send the
            // provider key (custom headers are not stripped) to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT_VALUE)
            .build()
            .map_err(Error::from_reqwest)?;
        let set = |keys: &[&str]| keys.iter().any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
        let all = set(&["ALL_PROXY", "all_proxy"]);
        let plain = !all && !set(&["HTTP_PROXY", "http_proxy"]);
        let direct_tls = settings.direct_client && !all && !set(&["HTTPS_PROXY", "https_proxy"]);
        let tls = if direct_tls { Some(direct::tls_connector(extra_roots)?) } else { None };
        let direct = (settings.direct_client && (plain || tls.is_some())).then(|| direct::Settings {
            connect_timeout: settings.connect_timeout,
            max_idle: settings.pool_max_idle_per_host,
            idle_timeout: settings.pool_idle_timeout,
            plain,
            tls,
        });
        Ok(Self { client, direct, read_timeout: settings.read_timeout })
    }

    /// One upstream attempt for a JSON endpoint. `deadline` bounds the whole
    /// attempt for JSON replies and the wait for response headers for streams.
    pub async fn call(
        &self,
        conn: &Connection,
        op: Operation,
        body: &RequestBody<'_>,
        deadline: Option<Duration>,
    ) -> Result<Reply> {
        self.call_inner(conn, op, body, deadline).await.map_err(|e| conn.scrub(e))
    }

    async fn call_inner(
        &self,
        conn: &Connection,
        op: Operation,
        body: &RequestBody<'_>,
        deadline: Option<Duration>,
    ) -> Result<Reply> {
        let stream = body.stream() && op.is_chat_family();
        let (wire, payload) = prepare(conn, op, body, stream)?;
        let url = conn.url(op).ok_or_else(|| unsupported(conn, op))?;
        let direct = self.direct.as_ref().zip(conn.direct_target(op)).filter(|(d, (target, _))| d.serves(target));
        let (content_type, bytes) = match direct {
            Some((settings, target)) => {
                conn.require_key()?;
                if stream {
                    return self.direct_stream(settings, conn, target, &payload, wire, deadline).await;
                }
                self.direct_unary(settings, conn, target, &payload, deadline).await?
            }
            _ => {
                let request = conn
                    .authorize(self.client.post(url.clone()))?
                    .header(CONTENT_TYPE, "application/json")
                    .body(payload);
                // Boxed: reqwest's futures are several times the size of the
                // direct client's, and every future this one is awaited in
                // (up to the server's per-request task) would carry and move
                // that size on every request, on either path.
                if stream {
                    return Box::pin(self.stream(conn, request, wire, deadline)).await;
                }
                Box::pin(self.unary(conn, request, deadline)).await?
            }
        };
        match wire {
            Wire::OpenAi { .. } if op == Operation::AudioSpeech => Ok(Reply::Binary { content_type, body: bytes }),
            Wire::OpenAi { .. } => Ok(Reply::Json { usage: openai::response_usage(op, &bytes), body: bytes }),
            Wire::Anthropic => anthropic::response(conn, &bytes).map(|(body, u)| Reply::Json { body, usage: Some(u) }),
            Wire::Gemini => gemini::response(conn, &bytes).map(|(body, u)| Reply::Json { body, usage: Some(u) }),
        }
    }

    /// Multipart transcription: the client's form fields are passed through
    /// with `model` replaced by the upstream id and `metadata` dropped.
    pub async fn transcribe(
        &self,
        conn: &Connection,
        fields: Vec<FormField>,
        deadline: Option<Duration>,
    ) -> Result<Reply> {
        let op = Operation::AudioTranscription;
        match conn.family() {
            WireFamily::OpenAiCompatible | WireFamily::Azure => {}
            WireFamily::Bedrock => return Err(bedrock_unsupported()),
            WireFamily::Anthropic | WireFamily::Gemini => return Err(unsupported(conn, op)),
        }
        let url = conn.url(op).ok_or_else(|| unsupported(conn, op))?;
        let mut form = Form::new().text("model", conn.upstream_model().to_owned());
        for field in fields {
            if matches!(field.name.as_str(), "model" | "metadata") {
                continue;
            }
            let part = match field.value {
                FormValue::Text(text) => Part::text(text),
                FormValue::File { file_name, content_type, data } => {
                    let len = data.len() as u64;
                    let mut part = Part::stream_with_length(reqwest::Body::from(data), len);
                    if let Some(name) = file_name {
                        part = part.file_name(name);
                    }
                    if let Some(ct) = content_type {
                        part = part.mime_str(&ct).map_err(|_| {
                            Error::invalid(format!("Invalid content type '{ct}' for field '{}'", field.name))
                        })?;
                    }
                    part
                }
            };
            form = form.part(field.name, part);
        }
        let request = conn.authorize(self.client.post(url.clone()))?.multipart(form);
        let (content_type, bytes) = self.unary(conn, request, deadline).await?;
        if is_json(&content_type) {
            Ok(Reply::Json { usage: usage::from_body(&bytes), body: bytes })
        } else {
            Ok(Reply::Binary { content_type, body: bytes })
        }
    }

    /// RUN-22 health probe: `GET {api_base}/models` with provider auth, which
    /// never bills tokens. Bedrock is healthy iff its credentials and region
    /// are configured. Any `Err` means unhealthy; an upstream status ≥ 400
    /// yields `<provider> health check returned <status>`.
    pub async fn probe(&self, conn: &Connection, deadline: Duration) -> Result<Probe> {
        let started = Instant::now();
        if conn.family() == WireFamily::Bedrock {
            return if conn.bedrock_ready() {
                Ok(Probe {
                    status: None,
                    latency: started.elapsed(),
                    message: "bedrock credentials configured".to_owned(),
                })
            } else {
                Err(Error::invalid("bedrock health check requires aws_access_key_id, aws_secret_access_key and region"))
            };
        }
        let url = conn
            .models_url()
            .ok_or_else(|| Error::invalid(format!("No health check for provider '{}'", conn.provider())))?;
        let request = conn.authorize(self.client.get(url.clone()))?.timeout(deadline);
        let provider = conn.provider();
        with_deadline(Some(deadline), async move {
            let response = request.send().await.map_err(Error::from_reqwest)?;
            let status = response.status().as_u16();
            let message = format!("{provider} health check returned {status}");
            if status >= 400 {
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                let mut err = Error::from_response(status, &headers, &body);
                err.message = message;
                return Err(err);
            }
            Ok(Probe { status: Some(status), latency: started.elapsed(), message })
        })
        .await
    }

    /// Send and read the whole body. Non-2xx → classified error.
    async fn unary(
        &self,
        conn: &Connection,
        request: reqwest::RequestBuilder,
        deadline: Option<Duration>,
    ) -> Result<(String, Bytes)> {
        let (limit, what) = self.timer_for(conn, deadline);
        with_timer(limit, what, async move {
            let response = request.send().await.map_err(Error::from_reqwest)?;
            let status = response.status();
            if !status.is_success() {
                return Err(error_response(response).await);
            }
            let content_type = content_type_of(response.headers());
            let bytes = response.bytes().await.map_err(Error::from_reqwest)?;
            Ok((content_type, bytes))
        })
        .await
    }

    /// [`Providers::unary`] on the direct client.
    async fn direct_unary(
        &self,
        settings: &direct::Settings,
        conn: &Connection,
        (target, pool): (&direct::Target, &Arc<direct::Pool>),
        payload: &[u8],
        deadline: Option<Duration>,
    ) -> Result<(String, Bytes)> {
        let (limit, what) = self.timer_for(conn, deadline);
        // Pinned where it is made, so the timer wraps a pointer to the
        // exchange instead of moving the exchange's future twice.
        let exchange = std::pin::pin!(async move {
            let response = direct::post(settings, pool, target, payload).await?;
            let bytes = response.body.collect().await?;
            if !(200..300).contains(&response.status) {
                let headers = response.headers.unwrap_or_default();
                return Err(Error::from_response(response.status, &headers, &bytes));
            }
            Ok((response.content_type.unwrap_or_else(|| OCTET_STREAM.to_owned()), bytes))
        });
        with_timer(limit, what, exchange).await
    }

    /// [`Providers::stream`] on the direct client.
    async fn direct_stream(
        &self,
        settings: &direct::Settings,
        conn: &Connection,
        (target, pool): (&direct::Target, &Arc<direct::Pool>),
        payload: &[u8],
        wire: Wire,
        deadline: Option<Duration>,
    ) -> Result<Reply> {
        let exchange = std::pin::pin!(async move {
            let response = direct::post(settings, pool, target, payload).await?;
            if !(200..300).contains(&response.status) {
                let headers = response.headers.unwrap_or_default();
                let bytes = response.body.collect().await.unwrap_or_default();
                return Err(Error::from_response(response.status, &headers, &bytes));
            }
            Ok(response)
        });
        let response = with_deadline(deadline, exchange).await?;
        Ok(Reply::Stream(self.chat_stream(conn, response.body.into_stream(), wire)))
    }

    /// One timer per attempt: the read timeout and the attempt deadline both
    /// bound the whole exchange, so only the shorter one is armed.
    fn timer_for(&self, conn: &Connection, deadline: Option<Duration>) -> (Duration, &'static str) {
        let read_timeout = conn.read_timeout().unwrap_or(self.read_timeout);
        match deadline {
            Some(d) if d <= read_timeout => (d, "attempt deadline"),
            _ => (read_timeout, "read timeout"),
        }
    }

    fn chat_stream(&self, conn: &Connection, body: BoxStream<'static, Result<Bytes>>, wire: Wire) -> ChatStream {
        let idle = conn.read_timeout().unwrap_or(self.read_timeout);
        match wire {
            Wire::Anthropic => ChatStream::new(body, AnthropicSse::new(conn), idle),
            Wire::OpenAi { hide_usage_chunk } => ChatStream::new(body, OpenAiSse::new(hide_usage_chunk), idle),
            Wire::Gemini => ChatStream::new(body, OpenAiSse::new(false), idle),
        }
    }

    /// Send, wait for the headers under the deadline, then hand the body to
    /// the SSE translator.
    async fn stream(
        &self,
        conn: &Connection,
        request: reqwest::RequestBuilder,
        wire: Wire,
        deadline: Option<Duration>,
    ) -> Result<Reply> {
        let response = with_deadline(deadline, async move {
            let response = request.send().await.map_err(Error::from_reqwest)?;
            if !response.status().is_success() {
                return Err(error_response(response).await);
            }
            Ok(response)
        })
        .await?;
        let body = response.bytes_stream().map(|r| r.map_err(Error::from_reqwest)).boxed();
        Ok(Reply::Stream(self.chat_stream(conn, body, wire)))
    }
}

/// Content type assumed when the upstream sends none.
const OCTET_STREAM: &str = "application/octet-stream";

fn content_type_of(headers: &http::HeaderMap) -> String {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or(OCTET_STREAM).to_owned()
}

/// Pick the wire translation and build the upstream body.
fn prepare(conn: &Connection, op: Operation, body: &RequestBody<'_>, stream: bool) -> Result<(Wire, Vec<u8>)> {
    match conn.family() {
        WireFamily::Bedrock => Err(bedrock_unsupported()),
        WireFamily::OpenAiCompatible if op.is_chat_family() && !conn.is_known_provider() => {
            Err(Error::invalid(format!("Unsupported provider '{}' for chat endpoint", conn.provider())))
        }
        WireFamily::OpenAiCompatible | WireFamily::Azure => {
            let inject = openai::injects_stream_usage(conn, op, body);
            Ok((Wire::OpenAi { hide_usage_chunk: inject }, openai::request_body(conn, body, inject)))
        }
        WireFamily::Anthropic if op == Operation::Chat => Ok((Wire::Anthropic, anthropic::request_body(conn, body)?)),
        WireFamily::Gemini if op == Operation::Chat && stream => {
            Err(Error::invalid("Streaming is not supported for provider 'gemini'"))
        }
        WireFamily::Gemini if op == Operation::Chat => Ok((Wire::Gemini, gemini::request_body(conn, body)?)),
        WireFamily::Anthropic | WireFamily::Gemini => Err(unsupported(conn, op)),
    }
}

fn unsupported(conn: &Connection, op: Operation) -> Error {
    Error::invalid(format!("Provider '{}' does not support the /{} endpoint", conn.provider(), op.path()))
}

fn bedrock_unsupported() -> Error {
    Error::invalid("Bedrock is not supported yet")
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
}

async fn error_response(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    match response.bytes().await {
        Ok(body) => Error::from_response(status, &headers, &body),
        // The status alone still classifies the failure.
        Err(_) => Error::from_response(status, &headers, b""),
    }
}

/// The attempt deadline (RUN-17); elapsing it is a health-affecting timeout.
async fn with_deadline<T>(deadline: Option<Duration>, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(limit) => with_timer(limit, "attempt deadline", fut).await,
    }
}

/// Bound `fut` by `limit`; `what` names the limit in the timeout message.
async fn with_timer<T>(limit: Duration, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Error::timeout(format!("Upstream did not answer within the {:.3} s {what}", limit.as_secs_f64())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_ca_bundle_without_certificates_is_refused_at_start() {
        for pem in [&b"not a certificate"[..], b"", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"] {
            let settings = HttpSettings { extra_root_certs_pem: Some(pem.to_vec()), ..HttpSettings::default() };
            let err = Providers::new(&settings).expect_err("no certificate in the bundle");
            assert!(err.message.contains("extra upstream CA certificates"), "{}", err.message);
        }
        assert!(Providers::new(&HttpSettings::default()).is_ok());
    }
}
