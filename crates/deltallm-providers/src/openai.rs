//! OpenAI-compatible upstreams (openai, openrouter, groq, together, fireworks,
//! deepinfra, perplexity, vllm, lmstudio, ollama, unknown providers) and
//! Azure OpenAI, which differs only in its auth header and `api-version`
//! query, both settled in [`Connection::build`].
//!
//! The upstream body is the client's body rewritten field by field from raw
//! JSON: `model` replaced (DEP-8), `metadata` dropped (RUN-5), `max_tokens`
//! renamed for gpt-5 (RUN-18), defaults appended when absent (RUN-16).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::body::{ObjectWriter, Raw, RequestBody};
use crate::connection::Connection;
use crate::operation::Operation;
use crate::usage::{self, Usage};

/// The upstream key for a client key after provider translation.
fn upstream_key<'k>(conn: &Connection, key: &'k str) -> &'k str {
    if key == "max_tokens" && conn.rename_max_tokens() { "max_completion_tokens" } else { key }
}

/// Should the gateway ask this stream's upstream for a usage chunk the client
/// did not request? Streams are priced from that chunk (SPEND-1); the client
/// does not see it (see [`crate::sse::OpenAiSse`]).
pub(crate) fn injects_stream_usage(conn: &Connection, op: Operation, body: &RequestBody<'_>) -> bool {
    #[derive(Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    op.is_chat_family()
        && body.stream()
        && conn.stream_usage_option()
        && !matches!(
            body.parse_field::<StreamOptions>("stream_options"),
            Ok(Some(StreamOptions { include_usage: Some(true) }))
        )
}

/// The client's `stream_options` with `include_usage: true` added.
fn with_include_usage(client: Option<Raw<'_>>) -> Cow<'static, str> {
    // Most streams come without options of their own: nothing to merge.
    let Some(raw) = client.filter(|raw| raw.get() != "null") else {
        return Cow::Borrowed(r#"{"include_usage":true}"#);
    };
    let mut options = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).unwrap_or_default();
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    Cow::Owned(serde_json::Value::Object(options).to_string())
}

/// The upstream JSON body. `inject_usage` comes from [`injects_stream_usage`].
pub(crate) fn request_body(conn: &Connection, body: &RequestBody<'_>, inject_usage: bool) -> Vec<u8> {
    let mut out =
        ObjectWriter::with_capacity(body.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 64);
    out.raw("model", conn.model_json());
    // When the client sent both, the explicit new name wins and the old one
    // is dropped: the upstream rejects requests that carry both.
    let has_new_name = body.contains("max_completion_tokens");
    for (key, value) in body.iter() {
        match key {
            "model" | "metadata" => continue,
            "stream_options" if inject_usage => continue,
            "max_tokens" if conn.rename_max_tokens() && has_new_name => continue,
            _ => out.raw(upstream_key(conn, key), value.get()),
        }
    }
    if inject_usage {
        out.raw("stream_options", &with_include_usage(body.get("stream_options")));
    }
    for (key, value) in conn.defaults() {
        let key = upstream_key(conn, key);
        let present = body.iter().any(|(k, _)| k != "metadata" && upstream_key(conn, k) == key);
        if !present {
            out.raw(key, value.get());
        }
    }
    out.finish()
}

/// Usage of a non-streaming response. Image responses are billed per image,
/// so the number of returned images is counted as well.
pub(crate) fn response_usage(op: Operation, body: &Bytes) -> Option<Usage> {
    if op != Operation::ImageGeneration {
        return usage::from_body(body);
    }
    #[derive(Deserialize)]
    struct ImagesEnvelope {
        data: Option<Vec<IgnoredAny>>,
        usage: Option<usage::WireUsage>,
    }
    let env: ImagesEnvelope = serde_json::from_slice(body).ok()?;
    let images = env.data.map(|d| d.len() as u64);
    match (env.usage.map(Usage::from), images) {
        (Some(u), images) => Some(Usage { images, ..u }),
        (None, Some(n)) => Some(Usage { images: Some(n), ..Usage::default() }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn conn(provider: &str, model: &str, defaults: Option<Value>) -> Connection {
        let params = json!({"model": model, "api_key": "k", "api_base": "http://localhost:1/v1"});
        let defaults = defaults.map(|d| d.as_object().cloned().unwrap());
        Connection::build(provider, params.as_object().unwrap(), defaults.as_ref()).unwrap()
    }

    fn rewrite(c: &Connection, client: Value) -> Value {
        let bytes = serde_json::to_vec(&client).unwrap();
        let body = RequestBody::parse(&bytes).unwrap();
        serde_json::from_slice(&request_body(c, &body, false)).unwrap()
    }

    #[test]
    fn model_replaced_metadata_dropped_defaults_fill_gaps() {
        let c = conn("openai", "openai/gpt-4o", Some(json!({"temperature": 0.1, "top_p": 0.5})));
        let out = rewrite(
            &c,
            json!({"model": "public", "messages": [{"role": "user", "content": "hi"}], "metadata": {"tags": ["a"]}, "temperature": 0.9}),
        );
        assert_eq!(
            out,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.9, "top_p": 0.5})
        );
    }

    #[test]
    fn gpt5_renames_max_tokens_including_defaults() {
        let c = conn("openai", "gpt-5", Some(json!({"max_tokens": 100})));
        assert_eq!(
            rewrite(&c, json!({"model": "m", "max_tokens": 7})),
            json!({"model": "gpt-5", "max_completion_tokens": 7})
        );
        assert_eq!(rewrite(&c, json!({"model": "m"})), json!({"model": "gpt-5", "max_completion_tokens": 100}));
        assert_eq!(
            rewrite(&c, json!({"model": "m", "max_tokens": 7, "max_completion_tokens": 9})),
            json!({"model": "gpt-5", "max_completion_tokens": 9})
        );
        let groq = conn("groq", "gpt-5", None);
        assert_eq!(rewrite(&groq, json!({"max_tokens": 7})), json!({"model": "gpt-5", "max_tokens": 7}));
    }

    #[test]
    fn image_usage_counts_images() {
        let body = Bytes::from_static(br#"{"created":1,"data":[{"url":"a"},{"url":"b"}]}"#);
        assert_eq!(response_usage(Operation::ImageGeneration, &body).and_then(|u| u.images), Some(2));
        let chat = Bytes::from_static(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#);
        assert_eq!(response_usage(Operation::Chat, &chat).map(|u| u.total_tokens), Some(3));
    }
}
