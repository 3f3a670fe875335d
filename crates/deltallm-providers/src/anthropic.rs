//! Anthropic Messages API: OpenAI chat request → Messages request, and the
//! response (JSON or SSE events) back to OpenAI chat shapes.
//!
//! Defaults (RUN-16) are read through [`Connection::field`] before
//! translation, so a default `max_tokens` beats the 4096 fallback while a
//! client value still beats both.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::body::{ObjectWriter, RequestBody};
use crate::connection::Connection;
use crate::error::{Error, ErrorClass, Result};
use crate::sse::{Field, Step, Translate, field};
use crate::tools::{ToolCall, ToolChoice};
use crate::usage::Usage;

/// Anthropic requires `max_tokens`; OpenAI does not. Used when neither the
/// client nor the deployment's defaults set one.
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;

/// OpenAI keys this translation consumes; defaults under other keys are
/// Anthropic-native settings (e.g. `thinking`) and are passed through.
const TRANSLATED: [&str; 17] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// OpenAI `tools` → Anthropic `tools` (`parameters` becomes `input_schema`).
fn tools(raw: &str) -> Result<Option<Vec<Value>>> {
    let Some(tools) = crate::tools::function_tools(raw, "anthropic")? else { return Ok(None) };
    let tools = tools
        .into_iter()
        .map(|t| {
            let schema = t.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut out = json!({"name": t.name, "input_schema": schema});
            if let Some(d) = t.description {
                out["description"] = d;
            }
            out
        })
        .collect();
    Ok(Some(tools))
}

/// OpenAI `tool_choice` (+ `parallel_tool_calls: false`) → Anthropic `tool_choice`.
fn tool_choice(raw: Option<&str>, parallel: Option<&str>) -> Result<Option<Value>> {
    let mut out = crate::tools::tool_choice(raw)?.map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    if parallel.map(str::trim) == Some("false") {
        let c = out.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    Ok(out)
}

/// An assistant turn that called tools → text block (if any) plus `tool_use` blocks.
fn assistant_with_tools(content: Value, calls: Vec<ToolCall>) -> Result<Value> {
    let mut blocks = Vec::with_capacity(calls.len() + 1);
    let text = text_of(&content)?;
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in calls {
        let input = call.input()?;
        blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
    }
    Ok(json!({"role": "assistant", "content": blocks}))
}

/// The Messages API request body.
pub(crate) fn request_body(conn: &Connection, body: &RequestBody<'_>) -> Result<Vec<u8>> {
    let messages: Vec<ChatMessage> = match conn.field(body, "messages") {
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| Error::invalid(format!("Invalid 'messages' field: {e}")))?
        }
        None => return Err(Error::invalid("'messages' is required")),
    };
    let tool_defs = match conn.field(body, "tools") {
        Some(raw) => tools(raw.get())?,
        None => None,
    };
    let choice = tool_choice(
        conn.field(body, "tool_choice").map(|r| r.get()),
        conn.field(body, "parallel_tool_calls").map(|r| r.get()),
    )?;

    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    for m in messages {
        match m.role.as_str() {
            "system" | "developer" => system.push(text_of(&m.content)?),
            "assistant" if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) => {
                out.push(assistant_with_tools(m.content, m.tool_calls.unwrap_or_default())?);
            }
            "user" | "assistant" => out.push(json!({"role": m.role, "content": content(m.content)?})),
            "tool" => {
                // Tool results travel in a user turn; consecutive ones share it.
                let id = m
                    .tool_call_id
                    .ok_or_else(|| Error::invalid("a tool message needs tool_call_id").with_param("messages"))?;
                let result = json!({"type": "tool_result", "tool_use_id": id, "content": text_of(&m.content)?});
                match out.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"]
                                .as_array()
                                .is_some_and(|c| c.iter().all(|b| b["type"] == "tool_result")) =>
                    {
                        if let Some(blocks) = last["content"].as_array_mut() {
                            blocks.push(result);
                        }
                    }
                    _ => out.push(json!({"role": "user", "content": [result]})),
                }
            }
            "function" => {
                return Err(Error::invalid("Legacy 'function' messages are not supported; use tool messages")
                    .with_param("messages"));
            }
            other => {
                return Err(Error::invalid(format!("Unsupported message role '{other}'")));
            }
        }
    }

    let mut w = ObjectWriter::with_capacity(256);
    w.raw("model", conn.model_json());
    if !system.is_empty() {
        w.value("system", &system.join("\n\n"))?;
    }
    w.value("messages", &out)?;
    if let Some(defs) = &tool_defs {
        w.value("tools", defs)?;
    }
    if let Some(choice) = &choice {
        w.value("tool_choice", choice)?;
    }
    let max_tokens = [body.get("max_tokens"), body.get("max_completion_tokens"), conn.field(body, "max_tokens")]
        .into_iter()
        .flatten()
        .find(|v| v.get().trim() != "null");
    match max_tokens {
        Some(v) => w.raw("max_tokens", v.get()),
        None => w.value("max_tokens", &DEFAULT_MAX_TOKENS)?,
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = conn.field(body, key).filter(|v| v.get().trim() != "null") {
            w.raw(key, v.get());
        }
    }
    if let Some(stop) = conn.field(body, "stop") {
        match serde_json::from_str::<Value>(stop.get()) {
            Ok(Value::String(s)) => w.value("stop_sequences", &[s])?,
            Ok(Value::Array(items)) if !items.is_empty() => w.value("stop_sequences", &items)?,
            Ok(Value::Null | Value::Array(_)) => {}
            _ => {
                return Err(Error::invalid("'stop' must be a string or an array of strings"));
            }
        }
    }
    if body.stream() {
        w.raw("stream", "true");
    }
    if let Some(user) = body.get("user").and_then(crate::body::raw_str) {
        w.value("metadata", &json!({"user_id": user}))?;
    }
    if let Some(thinking) = body.get("thinking") {
        w.raw("thinking", thinking.get());
    }
    for (key, value) in conn.defaults() {
        let client_sent = key == "thinking" && body.contains("thinking");
        if !TRANSLATED.contains(&key) && !client_sent {
            w.raw(key, value.get());
        }
    }
    Ok(w.finish())
}

/// System text: a string, or the text parts of an array.
fn text_of(content: &Value) -> Result<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            Ok(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n"))
        }
        _ => Err(Error::invalid("message content must be a string or an array")),
    }
}

/// OpenAI content (string or parts) → Anthropic content.
fn content(value: Value) -> Result<Value> {
    match value {
        Value::String(_) => Ok(value),
        Value::Null => Ok(Value::String(String::new())),
        Value::Array(parts) => parts.into_iter().map(part).collect::<Result<Vec<_>>>().map(Value::Array),
        _ => Err(Error::invalid("message content must be a string or an array")),
    }
}

fn part(p: Value) -> Result<Value> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(Value::Null)})),
        Some("image_url") => {
            let url = p
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("image_url part needs a url"))?;
            Ok(match data_url(url) {
                Some((media_type, data)) => {
                    json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
                }
                None => json!({"type": "image", "source": {"type": "url", "url": url}}),
            })
        }
        // Anything else is assumed to already be an Anthropic content block.
        _ => Ok(p),
    }
}

/// `data:<media type>;base64,<data>` → (media type, data).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

#[derive(Debug, Default, Clone, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// OpenAI semantics: prompt tokens include cached ones (Anthropic counts
    /// them separately), and the cached share is reported on its own.
    fn to_usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens;
        let prompt =
            self.input_tokens.unwrap_or(0) + cached.unwrap_or(0) + self.cache_creation_input_tokens.unwrap_or(0);
        let completion = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_cached: cached,
            ..Usage::default()
        }
    }

    fn merge(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
    }
}

fn usage_json(u: &Usage) -> Value {
    let mut v = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens});
    if let Some(cached) = u.prompt_tokens_cached {
        v["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    v
}

fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    stop_reason.map(|r| match r {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A Messages response → OpenAI `chat.completion`.
pub(crate) fn response(conn: &Connection, body: &[u8]) -> Result<(Bytes, Usage)> {
    #[derive(Deserialize)]
    struct Message {
        id: String,
        model: Option<String>,
        #[serde(default)]
        content: Vec<Block>,
        stop_reason: Option<String>,
        #[serde(default)]
        usage: WireUsage,
    }
    #[derive(Deserialize)]
    struct Block {
        #[serde(rename = "type")]
        kind: String,
        text: Option<String>,
        id: Option<String>,
        name: Option<String>,
        input: Option<Value>,
    }
    let msg: Message = serde_json::from_slice(body).map_err(|e| invalid_response(&e))?;
    let text: String = msg.content.iter().filter(|b| b.kind == "text").filter_map(|b| b.text.as_deref()).collect();
    let calls: Vec<Value> = msg
        .content
        .iter()
        .filter(|b| b.kind == "tool_use")
        .map(|b| {
            json!({"id": b.id, "type": "function", "function": {
                "name": b.name,
                "arguments": b.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string),
            }})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        // OpenAI sends `content: null` when a turn is only tool calls.
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(calls);
    }
    let usage = msg.usage.to_usage();
    let out = json!({
        "id": msg.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": msg.model.as_deref().unwrap_or(conn.upstream_model()),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(msg.stop_reason.as_deref()),
        }],
        "usage": usage_json(&usage),
    });
    let bytes = serde_json::to_vec(&out).map_err(|e| invalid_response(&e))?;
    Ok((Bytes::from(bytes), usage))
}

/// A 2xx whose body is not what the wire protocol promises is the upstream's
/// fault: treat it like a 502.
pub(crate) fn invalid_response(e: &serde_json::Error) -> Error {
    Error {
        class: ErrorClass::Upstream5xx,
        status: Some(502),
        message: format!("Invalid response body from upstream: {e}"),
        retry_after: None,
        upstream_fields: None,
    }
}

/// Anthropic SSE events → OpenAI chunk payloads.
pub(crate) struct AnthropicSse {
    id: String,
    model: String,
    created: u64,
    usage: WireUsage,
    seen_delta: bool,
    /// Content-block index → OpenAI tool-call index, for `tool_use` blocks.
    tool_blocks: Vec<(u64, usize)>,
}

impl AnthropicSse {
    pub(crate) fn new(conn: &Connection) -> Self {
        Self {
            id: String::new(),
            model: conn.upstream_model().to_owned(),
            created: unix_now(),
            usage: WireUsage::default(),
            seen_delta: false,
            tool_blocks: Vec::new(),
        }
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tool_blocks.iter().find(|(b, _)| *b == block).map(|(_, i)| *i)
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, usage: Option<&Usage>) -> Step {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        match serde_json::to_vec(&v) {
            Ok(bytes) => Step::Emit(Bytes::from(bytes)),
            Err(e) => Step::Fail(invalid_response(&e)),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u64,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u64,
        delta: Delta,
    },
    MessageDelta {
        delta: MessageDelta,
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    id: String,
    model: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDelta {
    stop_reason: Option<String>,
}

impl Translate for AnthropicSse {
    fn line(&mut self, line: Bytes) -> Step {
        let Field::Data(payload) = field(&line) else {
            return Step::Skip;
        };
        let event: Event = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "skipping unparsable anthropic stream event");
                return Step::Skip;
            }
        };
        match event {
            Event::MessageStart { message } => {
                self.id = message.id;
                if let Some(model) = message.model {
                    self.model = model;
                }
                self.usage.merge(message.usage);
                self.chunk(json!({"role": "assistant", "content": ""}), None, None)
            }
            Event::ContentBlockDelta { delta: Delta::Text { text }, .. } => {
                self.chunk(json!({"content": text}), None, None)
            }
            Event::ContentBlockStart { index, content_block: StartBlock::ToolUse { id, name } } => {
                let call = self.tool_blocks.len();
                self.tool_blocks.push((index, call));
                let delta = json!({"tool_calls": [{"index": call, "id": id, "type": "function",
                                                    "function": {"name": name, "arguments": ""}}]});
                self.chunk(delta, None, None)
            }
            Event::ContentBlockDelta { index, delta: Delta::InputJson { partial_json } } => {
                match self.tool_index(index) {
                    Some(call) => self.chunk(
                        json!({"tool_calls": [{"index": call, "function": {"arguments": partial_json}}]}),
                        None,
                        None,
                    ),
                    None => Step::Skip,
                }
            }
            Event::ContentBlockStart { content_block: StartBlock::Other, .. }
            | Event::ContentBlockDelta { delta: Delta::Other, .. }
            | Event::Other => Step::Skip,
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.merge(u);
                }
                self.seen_delta = true;
                let usage = self.usage.to_usage();
                self.chunk(json!({}), finish_reason(delta.stop_reason.as_deref()).or(Some("stop")), Some(&usage))
            }
            Event::MessageStop => Step::Done,
            Event::Error { error } => {
                let mut err =
                    crate::sse::stream_error(&serde_json::to_vec(&json!({"error": error})).unwrap_or_default());
                if error.get("type").and_then(Value::as_str) == Some("rate_limit_error") {
                    err.class = ErrorClass::RateLimit;
                }
                Step::Fail(err)
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.seen_delta.then(|| self.usage.to_usage())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conn(defaults: Option<Value>) -> Connection {
        let params = json!({"model": "anthropic/claude-x", "api_key": "k", "api_base": "http://localhost:1/v1"});
        let defaults = defaults.map(|d| d.as_object().cloned().unwrap());
        Connection::build("anthropic", params.as_object().unwrap(), defaults.as_ref()).unwrap()
    }

    fn translate(c: &Connection, client: Value) -> Result<Value> {
        let bytes = serde_json::to_vec(&client).unwrap();
        let body = RequestBody::parse(&bytes).unwrap();
        Ok(serde_json::from_slice(&request_body(c, &body)?).unwrap())
    }

    #[test]
    fn chat_request_becomes_messages_request() {
        let out = translate(
            &conn(None),
            json!({
                "model": "public",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "again"}
                ],
                "stop": "END", "temperature": 0.3, "metadata": {"x": 1}, "user": "u1", "frequency_penalty": 1
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-x",
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "again"}
                ],
                "max_tokens": 4096,
                "temperature": 0.3,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u1"}
            })
        );
    }

    #[test]
    fn max_tokens_precedence_client_then_default_then_fallback() {
        let c = conn(Some(json!({"max_tokens": 500, "top_k": 5})));
        let msgs = json!([{"role": "user", "content": "x"}]);
        let out = translate(&c, json!({"messages": msgs, "max_tokens": 10, "stream": true})).unwrap();
        assert_eq!(
            (out["max_tokens"].clone(), out["top_k"].clone(), out["stream"].clone()),
            (json!(10), json!(5), json!(true))
        );
        let out = translate(&c, json!({"messages": msgs})).unwrap();
        assert_eq!(out["max_tokens"], json!(500));
        assert_eq!(out.get("stream"), None);
    }

    #[test]
    fn tools_and_tool_turns_translate() {
        let out = translate(
            &conn(None),
            json!({
                "messages": [
                    {"role": "user", "content": "weather in Paris and Rome?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "rain"}
                ],
                "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather by city",
                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false
            }),
        )
        .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"name": "weather", "description": "Weather by city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        );
        assert_eq!(out["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        assert_eq!(
            out["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}}
            ]})
        );
        assert_eq!(
            out["messages"][2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"}
            ]}),
            "consecutive tool results share one user turn"
        );
        assert_eq!(out["messages"].as_array().unwrap().len(), 3);
        let named = translate(
            &conn(None),
            json!({"messages": [], "tool_choice": {"type": "function", "function": {"name": "weather"}}}),
        )
        .unwrap();
        assert_eq!(named["tool_choice"], json!({"type": "tool", "name": "weather"}));
    }

    #[test]
    fn malformed_tool_input_is_refused() {
        let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
        assert_eq!(translate(&conn(None), bad_args).unwrap_err().class, ErrorClass::InvalidRequest);
        let no_id = json!({"messages": [{"role": "tool", "content": "r"}]});
        assert!(translate(&conn(None), no_id).unwrap_err().message.contains("tool_call_id"));
        let other_tool = json!({"messages": [], "tools": [{"type": "code_interpreter"}]});
        assert!(translate(&conn(None), other_tool).is_err());
        assert!(translate(&conn(None), json!({"messages": []})).is_ok());
        assert!(translate(&conn(None), json!({"model": "m"})).is_err());
    }

    #[test]
    fn tool_use_responses_become_tool_calls() {
        let body = br#"{"id":"msg_2","model":"claude-x","content":[{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Paris"}}],"stop_reason":"tool_use","usage":{"input_tokens":20,"output_tokens":9}}"#;
        let (bytes, _) = response(&conn(None), body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                   "tool_calls": [{"id": "toolu_1", "type": "function",
                                   "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}})
        );

        let mut t = AnthropicSse::new(&conn(None));
        let lines: [&[u8]; 6] = [
            br#"data: {"type":"message_start","message":{"id":"msg_3","model":"claude-x","usage":{"input_tokens":5}}}"#,
            br#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_9","name":"weather","input":{}}}"#,
            br#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
            br#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Rome\"}"}}"#,
            br#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}"#,
            br#"data: {"type":"message_stop"}"#,
        ];
        let emitted: Vec<Value> = lines
            .into_iter()
            .filter_map(|l| match t.line(Bytes::from_static(l)) {
                Step::Emit(b) => Some(serde_json::from_slice(&b).unwrap()),
                Step::Fail(e) => panic!("{e}"),
                Step::Skip | Step::Done => None,
            })
            .collect();
        assert_eq!(
            emitted[1]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function", "function": {"name": "weather", "arguments": ""}}]})
        );
        let args: String = emitted[2..4]
            .iter()
            .map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(args, r#"{"city":"Rome"}"#);
        assert_eq!(emitted[4]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn response_becomes_chat_completion() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x-2024","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],"stop_reason":"max_tokens","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let (bytes, usage) = response(&conn(None), body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "claude-x-2024");
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "length"})
        );
        assert_eq!(v["usage"], json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}));
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (12, 3, 15));
        assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(response(&conn(None), b"not json").unwrap_err().class, ErrorClass::Upstream5xx);
    }

    #[test]
    fn stream_events_translate() {
        let mut t = AnthropicSse::new(&conn(None));
        let mut emitted = Vec::new();
        let lines: [&[u8]; 9] = [
            b"event: message_start",
            br#"data: {"type":"message_start","message":{"id":"msg_9","model":"claude-x","usage":{"input_tokens":7,"output_tokens":1}}}"#,
            br#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            br#"data: {"type":"ping"}"#,
            br#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            br#"data: {"type":"content_block_stop","index":0}"#,
            br#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
            b"",
            br#"data: {"type":"message_stop"}"#,
        ];
        let mut done = false;
        for l in lines {
            match t.line(Bytes::from_static(l)) {
                Step::Emit(b) => emitted.push(serde_json::from_slice::<Value>(&b).unwrap()),
                Step::Done => done = true,
                Step::Skip => {}
                Step::Fail(e) => panic!("{e}"),
            }
        }
        assert!(done);
        assert_eq!(emitted.len(), 3);
        assert_eq!(emitted[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(emitted[0]["object"], "chat.completion.chunk");
        assert_eq!(emitted[0]["id"], "msg_9");
        assert_eq!(emitted[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(emitted[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(emitted[2]["usage"], json!({"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}));
        assert_eq!(t.usage().map(|u| u.total_tokens), Some(11));
    }

    #[test]
    fn stream_error_event_fails() {
        let mut t = AnthropicSse::new(&conn(None));
        let step = t.line(Bytes::from_static(
            br#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ));
        let Step::Fail(e) = step else { panic!("expected failure") };
        assert_eq!((e.class, e.message.as_str()), (ErrorClass::Upstream5xx, "Overloaded"));
        assert!(e.health_affecting());
    }
}
