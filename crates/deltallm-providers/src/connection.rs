//! Everything needed to call one deployment, computed once per registry
//! rebuild: upstream model id (DEP-8), parsed endpoint URLs, the rendered
//! auth header (VAL-7, marked sensitive), default params (RUN-16) and the
//! read timeout (RUN-17). Nothing here is recomputed per request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deltallm_domain::SecretString;
use deltallm_domain::params::str_field;
use deltallm_domain::provider::{self, WireFamily};
use deltallm_domain::{Error as DomainError, auth_header};
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::body::{Raw, RequestBody};
use crate::direct::{Pool, Target};
use crate::error::{Error, Result};
use crate::operation::Operation;

/// Anthropic API version sent when the deployment sets none (RUN-18).
pub(crate) const ANTHROPIC_DEFAULT_VERSION: &str = "2023-06-01";
/// Bedrock region when the deployment sets none (RUN-18).
const BEDROCK_DEFAULT_REGION: &str = "us-east-1";
/// Self-hosted providers that commonly run without a key.
const KEYLESS_PROVIDERS: [&str; 3] = ["vllm", "lmstudio", "ollama"];

/// How the upstream is authenticated.
#[derive(Clone)]
pub(crate) enum Auth {
    /// No key configured and none needed: send no auth header.
    None,
    /// The provider needs a key and none is configured: fail at call time (RUN-18).
    Missing,
    /// Rendered header; the value is marked sensitive.
    Header(HeaderName, HeaderValue),
}

/// A prepared upstream connection for one deployment.
#[derive(Clone)]
pub struct Connection {
    provider: Arc<str>,
    family: WireFamily,
    known: bool,
    upstream_model: Arc<str>,
    /// `upstream_model` as a JSON string literal, written verbatim into bodies.
    model_json: Arc<str>,
    api_base: Arc<str>,
    /// Endpoint URL per [`Operation`] index; `None` where the wire family has
    /// no such endpoint.
    urls: Arc<[Option<Url>; 7]>,
    /// The same endpoints as request heads for the direct client (see
    /// `direct.rs`).
    direct_targets: Arc<[Option<Target>; 7]>,
    /// That client's idle connections to this deployment.
    direct_pool: Arc<Pool>,
    models_url: Option<Url>,
    auth: Auth,
    /// Fixed headers besides auth (anthropic-version).
    extra_headers: Arc<[(HeaderName, HeaderValue)]>,
    read_timeout: Option<Duration>,
    defaults: Arc<[(Box<str>, Box<RawValue>)]>,
    rename_max_tokens: bool,
    /// The upstream accepts `stream_options.include_usage` (resolved once here).
    stream_usage_option: bool,
    bedrock_ready: bool,
    /// Secret values of this connection (api key, aws_*), kept only to scrub
    /// them from upstream error text: some upstreams echo the key they got.
    secrets: Arc<[SecretString]>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_owned(),
            Auth::Missing => "missing".to_owned(),
            Auth::Header(name, _) => format!("{name}: {}", deltallm_domain::secret::REDACTED),
        };
        f.debug_struct("Connection")
            .field("provider", &self.provider)
            .field("family", &self.family)
            .field("upstream_model", &self.upstream_model)
            .field("api_base", &self.api_base)
            .field("auth", &auth)
            .field("read_timeout", &self.read_timeout)
            .field("default_params", &self.defaults.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl Connection {
    /// Prepare a deployment. `provider` is the RUN-3 provider string; `params`
    /// the effective `deltallm_params` (credential merged, DEP-9 applied);
    /// `default_params` is `model_info.default_params` (RUN-16).
    pub fn build(
        provider: &str,
        params: &Map<String, Value>,
        default_params: Option<&Map<String, Value>>,
    ) -> Result<Connection, DomainError> {
        let model = str_field(params, "model").unwrap_or("");
        let provider_name = provider::infer(Some(provider), model);
        let canonical = provider::canonical(&provider_name);
        let spec = provider::lookup(&provider_name);
        let family = spec.map_or(WireFamily::OpenAiCompatible, |s| s.family);
        let upstream_model = provider::upstream_model_id(&provider_name, model);
        if upstream_model.is_empty() {
            return Err(DomainError::invalid("deltallm_params.model is required"));
        }

        let api_version = str_field(params, "api_version");
        let region = str_field(params, "region");
        let api_base = resolve_api_base(&provider_name, family, params, region)?;
        let base = parse_base(&api_base)?;

        let mut urls: [Option<Url>; 7] = Default::default();
        let mut models_url = None;
        match family {
            WireFamily::OpenAiCompatible | WireFamily::Azure => {
                let version = if family == WireFamily::Azure { api_version } else { None };
                for op in Operation::ALL {
                    let segments: Vec<&str> = op.path().split('/').collect();
                    urls[op.index()] = Some(join(&base, &segments, version)?);
                }
                models_url = Some(join(&base, &["models"], version)?);
            }
            WireFamily::Anthropic => {
                urls[Operation::Chat.index()] = Some(join(&base, &["messages"], None)?);
                models_url = Some(join(&base, &["models"], None)?);
            }
            WireFamily::Gemini => {
                let id = upstream_model.strip_prefix("models/").unwrap_or(upstream_model);
                urls[Operation::Chat.index()] = Some(join(&base, &["models", &format!("{id}:generateContent")], None)?);
                models_url = Some(join(&base, &["models"], None)?);
            }
            WireFamily::Bedrock => {}
        }

        let api_key = str_field(params, "api_key");
        let key_required = spec.is_some() && !KEYLESS_PROVIDERS.contains(&canonical.as_str());
        let (header_name, header_format) = match family {
            WireFamily::OpenAiCompatible if provider::allows_custom_auth(&provider_name) => {
                auth_header::effective(str_field(params, "auth_header_name"), str_field(params, "auth_header_format"))
            }
            WireFamily::OpenAiCompatible => (auth_header::DEFAULT_NAME, auth_header::DEFAULT_FORMAT),
            WireFamily::Azure => ("api-key", "{api_key}"),
            WireFamily::Anthropic => ("x-api-key", "{api_key}"),
            // Header, not `?key=`: a key in the URL leaks into error messages and logs.
            WireFamily::Gemini => ("x-goog-api-key", "{api_key}"),
            WireFamily::Bedrock => ("", ""),
        };
        let auth = match api_key {
            _ if family == WireFamily::Bedrock => Auth::None,
            Some(key) => render_auth(header_name, header_format, key)?,
            None if key_required => Auth::Missing,
            None => Auth::None,
        };

        let mut extra_headers = Vec::new();
        if family == WireFamily::Anthropic {
            let version = HeaderValue::from_str(api_version.unwrap_or(ANTHROPIC_DEFAULT_VERSION))
                .map_err(|_| DomainError::invalid("deltallm_params.api_version is not a valid header value"))?;
            extra_headers.push((HeaderName::from_static("anthropic-version"), version));
        }

        let read_timeout = match params.get("timeout").and_then(Value::as_f64) {
            Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
            _ => None,
        };

        let mut defaults = Vec::new();
        for (key, value) in default_params.into_iter().flatten() {
            // `available_voices` is UI-only; model and metadata are never defaults.
            if matches!(key.as_str(), "available_voices" | "model" | "metadata") {
                continue;
            }
            let raw = serde_json::value::to_raw_value(value)
                .map_err(|e| DomainError::invalid(format!("model_info.default_params.{key}: {e}")))?;
            defaults.push((key.as_str().into(), raw));
        }

        let rename_max_tokens = matches!(canonical.as_str(), "openai" | "azure_openai")
            && upstream_model.to_ascii_lowercase().starts_with("gpt-5");
        let bedrock_ready = family == WireFamily::Bedrock
            && str_field(params, "aws_access_key_id").is_some()
            && str_field(params, "aws_secret_access_key").is_some()
            && region.is_some();
        let model_json = serde_json::to_string(upstream_model).map_err(|e| DomainError::invalid(e.to_string()))?;
        let secrets: Vec<SecretString> = ["api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"]
            .iter()
            .filter_map(|k| str_field(params, k))
            // Very short values would mask ordinary words; real keys are long.
            .filter(|v| v.len() >= 8)
            .map(SecretString::new)
            .collect();

        let content_type = HeaderValue::from_static("application/json");
        let user_agent = HeaderValue::from_static(crate::client::USER_AGENT_VALUE);
        let mut head_headers = vec![(&CONTENT_TYPE, &content_type), (&USER_AGENT, &user_agent)];
        if let Auth::Header(name, value) = &auth {
            head_headers.push((name, value));
        }
        head_headers.extend(extra_headers.iter().map(|(name, value)| (name, value)));
        let direct_targets = std::array::from_fn(|i| urls[i].as_ref().and_then(|u| Target::post(u, &head_headers)));

        Ok(Connection {
            provider: provider_name.into(),
            family,
            known: spec.is_some(),
            upstream_model: upstream_model.into(),
            model_json: model_json.into(),
            api_base: api_base.into(),
            direct_targets: Arc::new(direct_targets),
            direct_pool: Arc::default(),
            urls: Arc::new(urls),
            models_url,
            auth,
            extra_headers: extra_headers.into(),
            read_timeout,
            defaults: defaults.into(),
            rename_max_tokens,
            stream_usage_option: deltallm_domain::provider::accepts_stream_usage_option(&canonical),
            bedrock_ready,
            secrets: secrets.into(),
        })
    }

    /// Replace this connection's secret values in an error's text with the
    /// mask, so an upstream that echoes a key cannot leak it to clients or logs.
    pub fn scrub(&self, mut err: crate::Error) -> crate::Error {
        for secret in self.secrets.iter() {
            if err.message.contains(secret.expose()) {
                err.message = err.message.replace(secret.expose(), deltallm_domain::secret::REDACTED);
            }
        }
        err
    }

    /// DEP-8 upstream model id.
    pub fn upstream_model(&self) -> &str {
        &self.upstream_model
    }

    /// The API base URL (trailing `/` removed).
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// [`Self::upstream_model`] as a shared string: per-request records
    /// (spend) keep it without copying.
    pub fn upstream_model_shared(&self) -> &Arc<str> {
        &self.upstream_model
    }

    /// [`Self::api_base`] as a shared string.
    pub fn api_base_shared(&self) -> &Arc<str> {
        &self.api_base
    }

    /// The RUN-3 provider string.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The wire protocol the upstream speaks.
    pub fn family(&self) -> WireFamily {
        self.family
    }

    /// Per-deployment HTTP read timeout (`deltallm_params.timeout`), if set.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    pub(crate) fn is_known_provider(&self) -> bool {
        self.known
    }

    pub(crate) fn model_json(&self) -> &str {
        &self.model_json
    }

    pub(crate) fn rename_max_tokens(&self) -> bool {
        self.rename_max_tokens
    }

    pub(crate) fn stream_usage_option(&self) -> bool {
        self.stream_usage_option
    }

    pub(crate) fn bedrock_ready(&self) -> bool {
        self.bedrock_ready
    }

    pub(crate) fn url(&self, op: Operation) -> Option<&Url> {
        self.urls[op.index()].as_ref()
    }

    /// The endpoint for the direct client, if the upstream is `http://` or
    /// `https://`, and that client's connections to it.
    pub(crate) fn direct_target(&self, op: Operation) -> Option<(&Target, &Arc<Pool>)> {
        self.direct_targets[op.index()].as_ref().map(|t| (t, &self.direct_pool))
    }

    /// RUN-18: a provider that needs a key and has none fails before anything is sent.
    pub(crate) fn require_key(&self) -> Result<()> {
        match self.auth {
            Auth::Missing => Err(Error::invalid("Provider API key is missing for selected model")),
            Auth::None | Auth::Header(..) => Ok(()),
        }
    }

    pub(crate) fn models_url(&self) -> Option<&Url> {
        self.models_url.as_ref()
    }

    /// Default params in configuration order.
    pub(crate) fn defaults(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.defaults.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// A client field, else the deployment default for it (client wins, RUN-16).
    pub(crate) fn field<'s>(&'s self, body: &RequestBody<'s>, key: &str) -> Option<Raw<'s>> {
        body.get(key)
            .or_else(|| self.defaults.iter().find(|(k, _)| k.as_ref() == key).map(|(_, v)| Raw::validated(v.get())))
    }

    /// Add the auth header and fixed extra headers (anthropic-version, ...).
    /// RUN-18: a provider that needs a key and has none fails here.
    pub(crate) fn auth_headers(&self, headers: &mut http::HeaderMap) -> Result<()> {
        self.require_key()?;
        if let Auth::Header(name, value) = &self.auth {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in self.extra_headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    /// [`Connection::auth_headers`] on a reqwest request.
    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        let mut headers = http::HeaderMap::new();
        self.auth_headers(&mut headers)?;
        Ok(request.headers(headers))
    }
}

fn resolve_api_base(
    provider_name: &str,
    family: WireFamily,
    params: &Map<String, Value>,
    region: Option<&str>,
) -> Result<String, DomainError> {
    if let Some(base) = str_field(params, "api_base") {
        return Ok(base.trim_end_matches('/').to_owned());
    }
    let preset = provider::lookup(provider_name).and_then(|s| s.api_base);
    match (family, preset) {
        (WireFamily::Bedrock, Some(p)) => Ok(p.replace("{region}", region.unwrap_or(BEDROCK_DEFAULT_REGION))),
        (_, Some(p)) if !p.contains('{') => Ok(p.to_owned()),
        _ => Err(DomainError::invalid(format!("deltallm_params.api_base is required for provider '{provider_name}'"))),
    }
}

fn parse_base(api_base: &str) -> Result<Url, DomainError> {
    let url = Url::parse(api_base)
        .map_err(|_| DomainError::invalid(format!("deltallm_params.api_base '{api_base}' is not a valid URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(DomainError::invalid(format!("deltallm_params.api_base '{api_base}' must be an http(s) URL")));
    }
    Ok(url)
}

/// `base` + path segments (percent-encoded), plus `api-version` for Azure.
fn join(base: &Url, segments: &[&str], api_version: Option<&str>) -> Result<Url, DomainError> {
    let mut url = base.clone();
    url.set_fragment(None);
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| DomainError::invalid("deltallm_params.api_base cannot have a path"))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    if let Some(version) = api_version {
        url.query_pairs_mut().append_pair("api-version", version);
    }
    Ok(url)
}

fn render_auth(name: &str, format: &str, key: &str) -> Result<Auth, DomainError> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| DomainError::invalid(format!("auth_header_name '{name}' is not a valid HTTP header name")))?;
    let rendered = auth_header::render(format, key)?;
    // The message must not echo the rendered value: it contains the key.
    let mut value = HeaderValue::from_str(&rendered)
        .map_err(|_| DomainError::invalid("api_key contains characters that are not allowed in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(Auth::Header(name, value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn builds_openai_with_prefix_stripped_and_urls() {
        let c = Connection::build(
            "openai",
            &params(json!({"model": "openai/gpt-4o", "api_key": "sk-secret-1", "api_base": "http://h:1/v1/"})),
            None,
        )
        .unwrap();
        assert_eq!(c.upstream_model(), "gpt-4o");
        assert_eq!(c.api_base(), "http://h:1/v1");
        assert_eq!(c.url(Operation::Chat).unwrap().as_str(), "http://h:1/v1/chat/completions");
        assert_eq!(c.url(Operation::ImageGeneration).unwrap().as_str(), "http://h:1/v1/images/generations");
        assert_eq!(c.models_url().unwrap().as_str(), "http://h:1/v1/models");
        assert!(!c.rename_max_tokens());
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-secret-1"), "{debug}");
        assert!(debug.contains("authorization: ***REDACTED***"), "{debug}");
    }

    #[test]
    fn azure_gets_api_version_query_and_gpt5_rename() {
        let c = Connection::build(
            "azure",
            &params(json!({"model": "azure/gpt-5-mini", "api_key": "k", "api_base": "https://r.openai.azure.com/openai/v1", "api_version": "2024-10-21"})),
            None,
        )
        .unwrap();
        assert_eq!(
            c.url(Operation::Embeddings).unwrap().as_str(),
            "https://r.openai.azure.com/openai/v1/embeddings?api-version=2024-10-21"
        );
        assert!(c.rename_max_tokens());
        assert_eq!(c.upstream_model(), "gpt-5-mini");
    }

    #[test]
    fn presets_fill_missing_bases_but_placeholders_do_not() {
        let c = Connection::build("anthropic", &params(json!({"model": "claude-3-5", "api_key": "k"})), None).unwrap();
        assert_eq!(c.url(Operation::Chat).unwrap().as_str(), "https://api.anthropic.com/v1/messages");
        assert!(c.url(Operation::Embeddings).is_none());
        let err = Connection::build("azure_openai", &params(json!({"model": "m", "api_key": "k"})), None).unwrap_err();
        assert!(err.to_string().contains("api_base is required"), "{err}");
        let b = Connection::build("bedrock", &params(json!({"model": "bedrock/x"})), None).unwrap();
        assert_eq!(b.api_base(), "https://bedrock-runtime.us-east-1.amazonaws.com");
        assert!(!b.bedrock_ready());
        assert!(Connection::build("openai", &params(json!({"model": "m", "api_base": "ftp://x"})), None).is_err());
        assert!(Connection::build("openai", &params(json!({"model": " "})), None).is_err());
    }

    #[test]
    fn gemini_model_is_one_path_segment() {
        let c = Connection::build("gemini", &params(json!({"model": "gemini/gemini-2.0-flash", "api_key": "k"})), None)
            .unwrap();
        assert_eq!(
            c.url(Operation::Chat).unwrap().as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
    }

    #[test]
    fn keys_missing_vs_keyless_providers() {
        let openai = Connection::build("openai", &params(json!({"model": "m"})), None).unwrap();
        assert!(matches!(openai.auth, Auth::Missing));
        let vllm = Connection::build("vllm", &params(json!({"model": "m", "api_base": "http://x"})), None).unwrap();
        assert!(matches!(vllm.auth, Auth::None));
        let unknown =
            Connection::build("my-llm", &params(json!({"model": "m", "api_base": "http://x"})), None).unwrap();
        assert!(matches!(unknown.auth, Auth::None));
        assert!(!unknown.is_known_provider());
    }

    #[test]
    fn defaults_drop_ui_only_keys_and_timeout_reads_seconds() {
        let defaults = params(json!({"temperature": 0.2, "available_voices": ["a"], "model": "x"}));
        let c =
            Connection::build("openai", &params(json!({"model": "m", "api_key": "k", "timeout": 12})), Some(&defaults))
                .unwrap();
        let keys: Vec<&str> = c.defaults().map(|(k, _)| k).collect();
        assert_eq!(keys, ["temperature"]);
        assert_eq!(c.read_timeout(), Some(Duration::from_secs(12)));
    }

    #[test]
    fn bad_key_characters_do_not_echo_the_key() {
        let err =
            Connection::build("openai", &params(json!({"model": "m", "api_key": "sk-line\nbreak"})), None).unwrap_err();
        assert!(!err.to_string().contains("sk-line"), "{err}");
    }
}
