//! Google Gemini `generateContent`: OpenAI chat request → Gemini request and
//! the response back. Non-streaming only (RUN-14). The API key travels in the
//! `x-goog-api-key` header, never in the URL.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::anthropic::{data_url, invalid_response, unix_now};
use crate::body::{ObjectWriter, RequestBody};
use crate::connection::Connection;
use crate::error::{Error, ErrorClass, Result};
use crate::tools::{ToolCall, ToolChoice};
use crate::usage::Usage;

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

/// OpenAI `tools` → one Gemini tool with `functionDeclarations`.
fn function_declarations(raw: &str) -> Result<Option<Value>> {
    let Some(tools) = crate::tools::function_tools(raw, "gemini")? else { return Ok(None) };
    let declarations: Vec<Value> = tools
        .into_iter()
        .map(|t| {
            let mut d = json!({"name": t.name});
            if let Some(v) = t.description {
                d["description"] = v;
            }
            if let Some(v) = t.parameters {
                d["parameters"] = v;
            }
            d
        })
        .collect();
    Ok(Some(json!([{"functionDeclarations": declarations}])))
}

/// OpenAI `tool_choice` → Gemini `toolConfig`.
fn tool_config(raw: Option<&str>) -> Result<Option<Value>> {
    Ok(crate::tools::tool_choice(raw)?.map(|c| {
        let config = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        json!({"functionCallingConfig": config})
    }))
}

fn function_call_part(call: &ToolCall) -> Result<Value> {
    Ok(json!({"functionCall": {"name": call.function.name, "args": call.input()?}}))
}

/// OpenAI sampling keys → `generationConfig` keys.
const GENERATION_CONFIG: [(&str, &str); 7] = [
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("max_tokens", "maxOutputTokens"),
    ("max_completion_tokens", "maxOutputTokens"),
    ("n", "candidateCount"),
    ("seed", "seed"),
];

/// The `generateContent` request body.
pub(crate) fn request_body(conn: &Connection, body: &RequestBody<'_>) -> Result<Vec<u8>> {
    let messages: Vec<ChatMessage> = match conn.field(body, "messages") {
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|e| Error::invalid(format!("Invalid 'messages' field: {e}")))?
        }
        None => return Err(Error::invalid("'messages' is required")),
    };
    let tools = match conn.field(body, "tools") {
        Some(raw) => function_declarations(raw.get())?,
        None => None,
    };
    let tool_config = tool_config(conn.field(body, "tool_choice").map(|r| r.get()))?;
    let mut system_parts = Vec::new();
    let mut contents: Vec<Value> = Vec::with_capacity(messages.len());
    // Gemini answers a function call by name, OpenAI by call id.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for m in messages {
        match m.role.as_str() {
            "system" | "developer" => system_parts.extend(parts(m.content)?),
            "user" => contents.push(json!({"role": "user", "parts": parts(m.content)?})),
            "assistant" => {
                let calls = m.tool_calls.unwrap_or_default();
                let mut model_parts =
                    if calls.is_empty() || !m.content.is_null() { parts(m.content)? } else { Vec::new() };
                for call in &calls {
                    model_parts.push(function_call_part(call)?);
                    call_names.push((call.id.clone(), call.function.name.clone()));
                }
                contents.push(json!({"role": "model", "parts": model_parts}));
            }
            "tool" => {
                let id = m
                    .tool_call_id
                    .ok_or_else(|| Error::invalid("a tool message needs tool_call_id").with_param("messages"))?;
                let name = call_names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()).ok_or_else(|| {
                    Error::invalid(format!("tool message answers unknown tool call '{id}'")).with_param("messages")
                })?;
                let text: String = parts(m.content)?.iter().filter_map(|p| p.get("text")?.as_str()).collect();
                let part = json!({"functionResponse": {"name": name, "response": {"content": text}}});
                // Consecutive results share one turn, as Gemini expects.
                match contents.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["parts"]
                                .as_array()
                                .is_some_and(|p| p.iter().all(|x| x.get("functionResponse").is_some())) =>
                    {
                        if let Some(p) = last["parts"].as_array_mut() {
                            p.push(part);
                        }
                    }
                    _ => contents.push(json!({"role": "user", "parts": [part]})),
                }
            }
            other => {
                return Err(Error::invalid(format!("Unsupported message role '{other}' for provider 'gemini'")));
            }
        }
    }

    let mut config = Map::new();
    for (openai, gemini) in GENERATION_CONFIG {
        if config.contains_key(gemini) {
            continue;
        }
        if let Some(raw) = conn.field(body, openai) {
            let v: Value =
                serde_json::from_str(raw.get()).map_err(|e| Error::invalid(format!("Invalid '{openai}': {e}")))?;
            if !v.is_null() {
                config.insert(gemini.to_owned(), v);
            }
        }
    }
    if let Some(raw) = conn.field(body, "stop") {
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(s)) => {
                config.insert("stopSequences".into(), json!([s]));
            }
            Ok(Value::Array(items)) if !items.is_empty() => {
                config.insert("stopSequences".into(), Value::Array(items));
            }
            Ok(Value::Null | Value::Array(_)) => {}
            _ => {
                return Err(Error::invalid("'stop' must be a string or an array of strings"));
            }
        }
    }

    let mut w = ObjectWriter::with_capacity(256);
    w.value("contents", &contents)?;
    if !system_parts.is_empty() {
        w.value("systemInstruction", &json!({"parts": system_parts}))?;
    }
    if !config.is_empty() {
        w.value("generationConfig", &config)?;
    }
    if let Some(tools) = &tools {
        w.value("tools", tools)?;
    }
    if let Some(tool_config) = &tool_config {
        w.value("toolConfig", tool_config)?;
    }
    Ok(w.finish())
}

fn parts(content: Value) -> Result<Vec<Value>> {
    match content {
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Null => Ok(vec![json!({"text": ""})]),
        Value::Array(items) => items.into_iter().map(part).collect(),
        _ => Err(Error::invalid("message content must be a string or an array")),
    }
}

fn part(p: Value) -> Result<Value> {
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"text": p.get("text").cloned().unwrap_or(Value::Null)})),
        Some("image_url") => {
            let url = p
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("image_url part needs a url"))?;
            let (mime_type, data) =
                data_url(url).ok_or_else(|| Error::invalid("Gemini image inputs must be base64 data: URLs"))?;
            Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
        }
        other => Err(Error::invalid(format!(
            "Unsupported content part type '{}' for provider 'gemini'",
            other.unwrap_or("")
        ))),
    }
}

/// A `generateContent` response → OpenAI `chat.completion`.
pub(crate) fn response(conn: &Connection, body: &[u8]) -> Result<(Bytes, Usage)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        #[serde(default)]
        candidates: Vec<Candidate>,
        usage_metadata: Option<UsageMetadata>,
        model_version: Option<String>,
        response_id: Option<String>,
        prompt_feedback: Option<PromptFeedback>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Candidate {
        content: Option<Content>,
        finish_reason: Option<String>,
        index: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Content {
        #[serde(default)]
        parts: Vec<Part>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Part {
        text: Option<String>,
        #[serde(default)]
        thought: bool,
        function_call: Option<GeminiCall>,
    }
    #[derive(Deserialize)]
    struct GeminiCall {
        id: Option<String>,
        name: String,
        #[serde(default)]
        args: Value,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PromptFeedback {
        block_reason: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct UsageMetadata {
        prompt_token_count: Option<u64>,
        candidates_token_count: Option<u64>,
        thoughts_token_count: Option<u64>,
        total_token_count: Option<u64>,
        cached_content_token_count: Option<u64>,
    }

    let resp: Response = serde_json::from_slice(body).map_err(|e| invalid_response(&e))?;
    if resp.candidates.is_empty()
        && let Some(reason) = resp.prompt_feedback.and_then(|f| f.block_reason)
    {
        return Err(Error {
            class: ErrorClass::ContentPolicyViolation,
            status: Some(400),
            message: format!("Gemini blocked the prompt by its safety system ({reason})"),
            retry_after: None,
            upstream_fields: None,
        });
    }
    let choices: Vec<Value> = resp
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let text: String = c
                .content
                .iter()
                .flat_map(|c| c.parts.iter())
                .filter(|p| !p.thought)
                .filter_map(|p| p.text.as_deref())
                .collect();
            let calls: Vec<Value> = c
                .content
                .iter()
                .flat_map(|c| c.parts.iter())
                .filter_map(|p| p.function_call.as_ref())
                .enumerate()
                .map(|(n, f)| {
                    // Gemini may omit call ids; OpenAI clients need one to answer with.
                    let id = f.id.clone().unwrap_or_else(|| format!("call_{i}_{n}"));
                    let args = if f.args.is_null() { "{}".to_owned() } else { f.args.to_string() };
                    json!({"id": id, "type": "function", "function": {"name": f.name, "arguments": args}})
                })
                .collect();
            let mut message = json!({"role": "assistant", "content": text});
            let mut finish = c.finish_reason.as_deref().map(finish_reason);
            if !calls.is_empty() {
                if text.is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] = Value::Array(calls);
                finish = Some("tool_calls");
            }
            json!({
                "index": c.index.unwrap_or(i as u64),
                "message": message,
                "finish_reason": finish,
            })
        })
        .collect();
    let m = resp.usage_metadata.unwrap_or_default();
    let prompt = m.prompt_token_count.unwrap_or(0);
    // Thinking tokens are billed as output.
    let completion = m.candidates_token_count.unwrap_or(0) + m.thoughts_token_count.unwrap_or(0);
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: m.total_token_count.unwrap_or(prompt + completion),
        prompt_tokens_cached: m.cached_content_token_count,
        ..Usage::default()
    };
    let id = format!("chatcmpl-{}", resp.response_id.as_deref().unwrap_or("gemini"));
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": resp.model_version.as_deref().unwrap_or(conn.upstream_model()),
        "choices": choices,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens},
    });
    let bytes = serde_json::to_vec(&out).map_err(|e| invalid_response(&e))?;
    Ok((Bytes::from(bytes), usage))
}

fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "STOP" => "stop",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => "content_filter",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(defaults: Option<Value>) -> Connection {
        let params =
            json!({"model": "gemini/gemini-2.0-flash", "api_key": "k", "api_base": "http://localhost:1/v1beta"});
        let defaults = defaults.map(|d| d.as_object().cloned().unwrap());
        Connection::build("gemini", params.as_object().unwrap(), defaults.as_ref()).unwrap()
    }

    #[test]
    fn chat_request_becomes_generate_content() {
        let client = json!({
            "model": "public",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": [{"type": "text", "text": "more"}]}
            ],
            "max_tokens": 20, "stop": ["x"], "metadata": {"a": 1}
        });
        let bytes = serde_json::to_vec(&client).unwrap();
        let body = RequestBody::parse(&bytes).unwrap();
        let out: Value =
            serde_json::from_slice(&request_body(&conn(Some(json!({"temperature": 0.5}))), &body).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"text": "yo"}]},
                    {"role": "user", "parts": [{"text": "more"}]}
                ],
                "systemInstruction": {"parts": [{"text": "sys"}]},
                "generationConfig": {"temperature": 0.5, "maxOutputTokens": 20, "stopSequences": ["x"]}
            })
        );
    }

    #[test]
    fn response_becomes_chat_completion() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"},{"text":"lo"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6},"modelVersion":"gemini-2.0-flash-001","responseId":"r1"}"#;
        let (bytes, usage) = response(&conn(None), body).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["id"], "chatcmpl-r1");
        assert_eq!(v["model"], "gemini-2.0-flash-001");
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"})
        );
        assert_eq!(v["usage"], json!({"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}));
        assert_eq!(usage.total_tokens, 6);
    }

    #[test]
    fn tools_translate_both_ways() {
        let client = json!({
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": "snow"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}}
        });
        let bytes = serde_json::to_vec(&client).unwrap();
        let body = RequestBody::parse(&bytes).unwrap();
        let out: Value = serde_json::from_slice(&request_body(&conn(None), &body).unwrap()).unwrap();
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [{"name": "weather", "description": "d",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
        );
        assert_eq!(
            out["contents"][1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]})
        );
        assert_eq!(
            out["contents"][2],
            json!({"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"content": "snow"}}}]})
        );

        let reply = br#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"weather","args":{"city":"Oslo"}}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3}}"#;
        let (bytes, _) = response(&conn(None), reply).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                   "tool_calls": [{"id": "call_0_0", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}})
        );
        let unknown = json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]});
        let bytes = serde_json::to_vec(&unknown).unwrap();
        assert!(request_body(&conn(None), &RequestBody::parse(&bytes).unwrap()).is_err());
    }

    #[test]
    fn blocked_prompt_is_content_policy() {
        let err = response(&conn(None), br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#).unwrap_err();
        assert_eq!(err.class, ErrorClass::ContentPolicyViolation);
    }
}
