//! Anthropic Messages adapter, JSON and streaming.

use deltallm_providers::{ErrorClass, Operation};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

#[tokio::test]
async fn chat_translates_both_ways_with_anthropic_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
            "content": [{"type": "text", "text": "Bonjour"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 21, "output_tokens": 5}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn(
        "anthropic",
        &format!("{}/v1", server.uri()),
        json!({"model": "anthropic/claude-sonnet-4"}),
        Some(json!({"temperature": 0.2})),
    );
    let client = bytes(&json!({
        "model": "claude",
        "messages": [{"role": "system", "content": "Answer in French"}, {"role": "user", "content": "Hello"}],
        "stop": ["\n\n"], "metadata": {"secret_tag": 1}
    }));

    let (value, usage) = json_reply(providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap());

    let req = only_request(&server).await;
    assert_eq!(header(&req, "x-api-key"), Some(KEY));
    assert_eq!(header(&req, "anthropic-version"), Some("2023-06-01"));
    assert!(header(&req, "authorization").is_none());
    assert_eq!(
        json_body(&req),
        json!({
            "model": "claude-sonnet-4",
            "system": "Answer in French",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4096,
            "temperature": 0.2,
            "stop_sequences": ["\n\n"]
        })
    );
    assert_eq!(value["object"], "chat.completion");
    assert_eq!(value["id"], "msg_01");
    assert_eq!(value["model"], "claude-sonnet-4");
    assert_eq!(
        value["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Bonjour"}, "finish_reason": "stop"}])
    );
    assert_eq!(value["usage"], json!({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}));
    assert_eq!(usage.map(|u| u.total_tokens), Some(26));
}

#[tokio::test]
async fn api_version_overrides_default_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "m", "content": [], "usage": {}})))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn(
        "anthropic",
        &format!("{}/v1", server.uri()),
        json!({"model": "claude", "api_version": "2024-01-01"}),
        None,
    );
    let client = bytes(&json!({"messages": [{"role": "user", "content": "x"}]}));
    providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap();
    assert_eq!(header(&only_request(&server).await, "anthropic-version"), Some("2024-01-01"));
}

const SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4\",\"content\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\":\"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n",
);

async fn stream_server(sse: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream"))
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn stream_translates_events_to_openai_chunks() {
    let server = stream_server(format!("{SSE}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n")).await;
    let c = conn("anthropic", &format!("{}/v1", server.uri()), json!({"model": "claude-sonnet-4"}), None);
    let client = bytes(&json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true, "max_tokens": 50}));

    let reply = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap();
    let (items, usage) = collect(reply).await;

    let chunks: Vec<Value> = items.into_iter().map(|i| serde_json::from_str(&i.unwrap()).unwrap()).collect();
    let deltas: Vec<Value> = chunks.iter().map(|c| c["choices"][0]["delta"].clone()).collect();
    assert_eq!(
        deltas,
        [json!({"role": "assistant", "content": ""}), json!({"content": "Hel"}), json!({"content": "lo"}), json!({})]
    );
    let finishes: Vec<Value> = chunks.iter().map(|c| c["choices"][0]["finish_reason"].clone()).collect();
    assert_eq!(finishes, [Value::Null, Value::Null, Value::Null, json!("length")]);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "msg_s" && c["model"] == "claude-sonnet-4")
    );
    assert_eq!(chunks[3]["usage"], json!({"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}));
    assert_eq!(usage.get().map(|u| (u.prompt_tokens, u.completion_tokens)), Some((10, 6)));
    let sent = json_body(&only_request(&server).await);
    assert_eq!((sent["stream"].clone(), sent["max_tokens"].clone()), (json!(true), json!(50)));
}

#[tokio::test]
async fn stream_without_message_stop_ends_in_error() {
    let server = stream_server(SSE.to_owned()).await;
    let c = conn("anthropic", &format!("{}/v1", server.uri()), json!({"model": "claude-sonnet-4"}), None);
    let client = bytes(&json!({"messages": [{"role": "user", "content": "Hi"}], "stream": true}));
    let (items, _) = collect(providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap()).await;
    assert_eq!(items.len(), 5, "4 chunks then the error");
    assert!(items[..4].iter().all(Result::is_ok));
    let err = items[4].as_ref().unwrap_err();
    assert_eq!(err.class, ErrorClass::Transport);
    assert_eq!(err.message, "upstream stream ended before completion");
}

#[tokio::test]
async fn embeddings_are_not_an_anthropic_endpoint() {
    let c = conn("anthropic", "http://127.0.0.1:9/v1", json!({"model": "claude"}), None);
    let client = bytes(&json!({"input": "x"}));
    let err = providers().call(&c, Operation::Embeddings, &body(&client), None).await.unwrap_err();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::InvalidRequest, "Provider 'anthropic' does not support the /embeddings endpoint")
    );
}

#[tokio::test]
async fn tool_calls_round_trip_over_the_wire() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_t", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
            "content": [{"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "rust"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 30, "output_tokens": 12}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("anthropic", &format!("{}/v1", server.uri()), json!({"model": "claude-sonnet-4"}), None);
    let client = bytes(&json!({
        "model": "claude",
        "messages": [{"role": "user", "content": "search rust"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "auto"
    }));

    let (value, _) = json_reply(providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap());

    let sent = json_body(&only_request(&server).await);
    assert_eq!(sent["tools"], json!([{"name": "lookup", "input_schema": {"type": "object"}}]));
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));
    let message: &Value = &value["choices"][0]["message"];
    assert_eq!(message["content"], "Checking.");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"rust\"}"}}])
    );
    assert_eq!(value["choices"][0]["finish_reason"], "tool_calls");
}
