//! Legacy `/v1/completions` served through chat (RUN-4): the prompt becomes
//! one user message, the chat answer is reshaped into a `text_completion`.
//! Current models (and Anthropic or Gemini) have no completions endpoint, so
//! clients written for the reference system keep working on any chat
//! deployment. Options that only the old endpoint has are refused up front.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::body::{ObjectWriter, RequestBody};
use crate::error::{Error, Result};

/// Fields of a completions request with no chat equivalent.
fn unsupported(body: &RequestBody<'_>) -> Option<&'static str> {
    let set = |key: &str| body.get(key).map(|v| v.get().trim()).filter(|v| *v != "null" && *v != "false");
    if set("echo").is_some() {
        return Some("echo");
    }
    if set("suffix").is_some() {
        return Some("suffix");
    }
    if set("logprobs").is_some() {
        return Some("logprobs");
    }
    match set("best_of").map(str::parse::<f64>) {
        Some(Ok(n)) if n <= 1.0 => None,
        Some(_) => Some("best_of"),
        None => None,
    }
}

/// The prompt as one user message's text. A list with one string (or one
/// token array, which a chat model cannot read) is all the endpoint allows.
fn prompt_text(body: &RequestBody<'_>) -> Result<String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Prompt {
        Text(String),
        List(Vec<String>),
    }
    let bad = || Error::invalid("'prompt' must be a string (or a list holding one string)").with_param("prompt");
    match body.parse_field::<Prompt>("prompt").map_err(|_| bad())? {
        None => Err(Error::invalid("'prompt' is required").with_param("prompt")),
        Some(Prompt::Text(t)) => Ok(t),
        Some(Prompt::List(mut list)) if list.len() == 1 => Ok(list.remove(0)),
        Some(Prompt::List(_)) => Err(bad()),
    }
}

/// The chat request for a completions request: `prompt` → `messages`, the
/// rest (model, max_tokens, temperature, stop, n, stream, user, ...) as sent.
pub fn chat_request(body: &RequestBody<'_>) -> Result<Vec<u8>> {
    if let Some(field) = unsupported(body) {
        return Err(
            Error::invalid(format!("'{field}' is not supported on /v1/completions by this gateway")).with_param(field)
        );
    }
    let prompt = prompt_text(body)?;
    let mut out = ObjectWriter::with_capacity(prompt.len() + 256);
    for (key, value) in body.iter() {
        if matches!(key, "prompt" | "echo" | "suffix" | "logprobs" | "best_of") {
            continue;
        }
        out.raw(key, value.get());
    }
    out.value("messages", &[json!({"role": "user", "content": prompt})])?;
    Ok(out.finish())
}

fn text_choice(choice: &Value, text_of: impl Fn(&Value) -> Option<&Value>) -> Value {
    let text = text_of(choice).and_then(Value::as_str).unwrap_or("");
    json!({
        "text": text,
        "index": choice.get("index").cloned().unwrap_or(json!(0)),
        "logprobs": null,
        "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null),
    })
}

fn reshape(chat: &Value, text_of: impl Fn(&Value) -> Option<&Value>) -> Value {
    let mut out = Map::new();
    for key in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = chat.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("object".into(), json!("text_completion"));
    let choices: Vec<Value> = chat
        .get("choices")
        .and_then(Value::as_array)
        .map(|c| c.iter().map(|choice| text_choice(choice, &text_of)).collect())
        .unwrap_or_default();
    out.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = chat.get("usage").filter(|u| !u.is_null()) {
        out.insert("usage".into(), usage.clone());
    }
    Value::Object(out)
}

/// A `chat.completion` body as a `text_completion` body.
pub fn completion_response(chat: &[u8]) -> Result<Bytes> {
    let chat: Value = serde_json::from_slice(chat)
        .map_err(|e| Error::transport(format!("upstream returned an unreadable chat completion: {e}")))?;
    let out = reshape(&chat, |c| c.pointer("/message/content"));
    Ok(Bytes::from(out.to_string()))
}

/// One `chat.completion.chunk` payload as a `text_completion` chunk payload.
/// A payload that is not JSON passes through unchanged.
pub fn completion_chunk(chunk: &[u8]) -> Bytes {
    match serde_json::from_slice::<Value>(chunk) {
        Ok(chat) => Bytes::from(reshape(&chat, |c| c.pointer("/delta/content")).to_string()),
        Err(_) => Bytes::copy_from_slice(chunk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_of(v: Value) -> Result<Value> {
        let bytes = v.to_string();
        let body = RequestBody::parse(bytes.as_bytes())?;
        Ok(serde_json::from_slice(&chat_request(&body)?).unwrap())
    }

    #[test]
    fn prompt_becomes_one_user_message_and_the_rest_is_kept() {
        let chat = chat_of(json!({"model": "m", "prompt": "Say hi", "max_tokens": 5, "stop": ["\n"], "stream": true}))
            .unwrap();
        assert_eq!(
            chat,
            json!({"model": "m", "max_tokens": 5, "stop": ["\n"], "stream": true,
                   "messages": [{"role": "user", "content": "Say hi"}]})
        );
        let listed = chat_of(json!({"model": "m", "prompt": ["one"], "best_of": 1, "echo": false})).unwrap();
        assert_eq!(listed["messages"][0]["content"], "one");
    }

    #[test]
    fn old_only_options_and_bad_prompts_are_refused() {
        for (field, body) in [
            ("echo", json!({"model": "m", "prompt": "p", "echo": true})),
            ("best_of", json!({"model": "m", "prompt": "p", "best_of": 3})),
            ("logprobs", json!({"model": "m", "prompt": "p", "logprobs": 2})),
            ("suffix", json!({"model": "m", "prompt": "p", "suffix": "end"})),
            ("prompt", json!({"model": "m"})),
            ("prompt", json!({"model": "m", "prompt": ["a", "b"]})),
            ("prompt", json!({"model": "m", "prompt": [1, 2, 3]})),
        ] {
            let err = chat_of(body).unwrap_err();
            assert_eq!(err.class, crate::ErrorClass::InvalidRequest, "{field}");
            assert_eq!(err.upstream_fields.and_then(|f| f.param).as_deref(), Some(field), "{}", err.message);
        }
    }

    #[test]
    fn chat_answers_are_reshaped() {
        let chat = json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
        let out: Value = serde_json::from_slice(&completion_response(chat.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"id": "c1", "object": "text_completion", "created": 7, "model": "up",
                   "choices": [{"text": "Hi!", "index": 0, "logprobs": null, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        );
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "up",
            "choices": [{"index": 0, "delta": {"content": "H"}, "finish_reason": null}]});
        let out: Value = serde_json::from_slice(&completion_chunk(chunk.to_string().as_bytes())).unwrap();
        assert_eq!(out["object"], "text_completion");
        assert_eq!(out["choices"][0]["text"], "H");
    }
}
