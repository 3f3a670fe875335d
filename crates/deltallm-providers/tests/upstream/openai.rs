//! OpenAI-compatible and Azure adapters.

use bytes::Bytes;
use deltallm_providers::{ErrorClass, FormField, FormValue, Operation, Reply, Usage};
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn completion() -> serde_json::Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11, "prompt_tokens_details": {"cached_tokens": 3}}
    })
}

#[tokio::test]
async fn chat_sends_bearer_and_rewritten_body_and_passes_reply_through() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn(
        "openai",
        &format!("{}/v1", server.uri()),
        json!({"model": "openai/gpt-4o"}),
        Some(json!({"temperature": 0.1, "top_p": 0.5, "available_voices": ["alloy"]})),
    );
    let client = bytes(&json!({
        "model": "my-public-name",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"tags": ["prod"], "trace": "t1"},
        "temperature": 0.9
    }));

    let reply = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap();

    let (value, usage) = json_reply(reply);
    assert_eq!(value, completion(), "OpenAI replies pass through untouched");
    assert_eq!(
        usage,
        Some(Usage {
            prompt_tokens: 9,
            completion_tokens: 2,
            total_tokens: 11,
            prompt_tokens_cached: Some(3),
            ..Usage::default()
        })
    );
    let req = only_request(&server).await;
    assert_eq!(header(&req, "authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(header(&req, "content-type"), Some("application/json"));
    assert_eq!(
        json_body(&req),
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.9, "top_p": 0.5}),
        "model replaced, metadata stripped, defaults only where absent, available_voices never sent"
    );
}

#[tokio::test]
async fn custom_auth_header_name_and_format() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(2)
        .mount(&server)
        .await;
    let base = format!("{}/v1", server.uri());
    let client = bytes(&json!({"model": "x", "messages": []}));

    let x_api_key = conn(
        "groq",
        &base,
        json!({"model": "llama", "auth_header_name": "X-API-Key", "auth_header_format": "{api_key}"}),
        None,
    );
    providers().call(&x_api_key, Operation::Chat, &body(&client), None).await.unwrap();
    let token = conn("vllm", &base, json!({"model": "llama", "auth_header_format": "Token {api_key}"}), None);
    providers().call(&token, Operation::Chat, &body(&client), None).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].headers.get("x-api-key").unwrap(), KEY);
    assert!(requests[0].headers.get("authorization").is_none(), "custom header replaces Authorization");
    assert_eq!(requests[1].headers.get("authorization").unwrap().to_str().unwrap(), format!("Token {KEY}"));
}

#[tokio::test]
async fn gpt5_gets_max_completion_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("openai", &format!("{}/v1", server.uri()), json!({"model": "gpt-5-mini"}), None);
    let client = bytes(&json!({"model": "x", "messages": [], "max_tokens": 64}));
    providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap();
    assert_eq!(
        json_body(&only_request(&server).await),
        json!({"model": "gpt-5-mini", "messages": [], "max_completion_tokens": 64})
    );
}

#[tokio::test]
async fn azure_uses_api_key_header_and_api_version() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/v1/embeddings"))
        .and(query_param("api-version", "2024-10-21"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"object": "list", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = conn(
        "azure",
        &format!("{}/openai/v1", server.uri()),
        json!({"model": "azure/text-embedding-3-small", "api_version": "2024-10-21"}),
        None,
    );
    let client = bytes(&json!({"model": "emb", "input": ["a", "b"]}));
    let (_, usage) = json_reply(providers().call(&c, Operation::Embeddings, &body(&client), None).await.unwrap());
    assert_eq!(usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((4, 0, 4)));
    let req = only_request(&server).await;
    assert_eq!(header(&req, "api-key"), Some(KEY));
    assert!(header(&req, "authorization").is_none());
    assert_eq!(json_body(&req), json!({"model": "text-embedding-3-small", "input": ["a", "b"]}));
}

#[tokio::test]
async fn unknown_provider_rejects_chat_but_serves_embeddings_without_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/embeddings"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("my-private-llm", &server.uri(), json!({"model": "m", "api_key": null}), None);
    let client = bytes(&json!({"model": "x", "messages": [], "input": "a"}));

    let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::InvalidRequest);
    assert_eq!(err.client_message(), "Unsupported provider 'my-private-llm' for chat endpoint");

    providers().call(&c, Operation::Embeddings, &body(&client), None).await.unwrap();
    assert!(header(&only_request(&server).await, "authorization").is_none(), "no key → no auth header");
}

#[tokio::test]
async fn missing_key_fails_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    for provider in ["openai", "anthropic", "azure"] {
        let c = conn(provider, &server.uri(), json!({"model": "m", "api_key": null}), None);
        let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}));
        let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
        assert_eq!(
            (err.class, err.message.as_str()),
            (ErrorClass::InvalidRequest, "Provider API key is missing for selected model"),
            "{provider}"
        );
        assert!(!err.health_affecting());
    }
}

#[tokio::test]
async fn speech_returns_binary_and_images_count_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(vec![0xFF, 0xF3, 0x01], "audio/mpeg"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"created": 1, "data": [{"url": "u1"}, {"url": "u2"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("openai", &format!("{}/v1", server.uri()), json!({"model": "tts-1"}), None);

    let speech = bytes(&json!({"model": "x", "input": "hello", "voice": "alloy"}));
    match providers().call(&c, Operation::AudioSpeech, &body(&speech), None).await.unwrap() {
        Reply::Binary { content_type, body } => {
            assert_eq!(content_type, "audio/mpeg");
            assert_eq!(body, Bytes::from_static(&[0xFF, 0xF3, 0x01]));
        }
        other => panic!("expected binary, got {other:?}"),
    }
    let image = bytes(&json!({"model": "x", "prompt": "cat", "n": 2}));
    let (_, usage) = json_reply(providers().call(&c, Operation::ImageGeneration, &body(&image), None).await.unwrap());
    assert_eq!(usage.and_then(|u| u.images), Some(2));
}

#[tokio::test]
async fn transcription_passes_multipart_through_with_upstream_model() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"text": "hi", "usage": {"type": "duration", "seconds": 2.5}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("openai", &format!("{}/v1", server.uri()), json!({"model": "openai/whisper-1"}), None);
    let fields = vec![
        FormField { name: "model".into(), value: FormValue::Text("public-whisper".into()) },
        FormField { name: "language".into(), value: FormValue::Text("de".into()) },
        FormField {
            name: "file".into(),
            value: FormValue::File {
                file_name: Some("a.wav".into()),
                content_type: Some("audio/wav".into()),
                data: Bytes::from_static(b"RIFFDATA"),
            },
        },
    ];
    let (value, usage) = json_reply(providers().transcribe(&c, fields, None).await.unwrap());
    assert_eq!(value["text"], "hi");
    assert_eq!(usage.and_then(|u| u.seconds), Some(2.5));
    let req = only_request(&server).await;
    assert_eq!(header(&req, "authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert!(header(&req, "content-type").unwrap().starts_with("multipart/form-data; boundary="));
    let text = String::from_utf8_lossy(&req.body);
    assert!(text.contains("name=\"model\"\r\n\r\nwhisper-1\r\n"), "{text}");
    assert!(!text.contains("public-whisper"), "{text}");
    assert!(text.contains("name=\"language\"\r\n\r\nde\r\n"), "{text}");
    assert!(text.contains("filename=\"a.wav\"") && text.contains("RIFFDATA"), "{text}");
}

#[tokio::test]
async fn bedrock_calls_are_refused_locally() {
    let c = conn("bedrock", "http://127.0.0.1:9", json!({"model": "bedrock/anthropic.claude"}), None);
    let client = bytes(&json!({"model": "x", "messages": []}));
    let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
    assert_eq!((err.class, err.message.as_str()), (ErrorClass::InvalidRequest, "Bedrock is not supported yet"));
}

/// SSE body: one content chunk, the usage-only chunk, `[DONE]`.
fn sse_with_usage() -> ResponseTemplate {
    ResponseTemplate::new(200).insert_header("content-type", "text/event-stream").set_body_string(concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n"
    ))
}

async fn stream_through(provider: &str, client: serde_json::Value) -> (Vec<String>, Option<Usage>, serde_json::Value) {
    stream_through_with(&providers(), provider, client).await
}

async fn stream_through_with(
    providers: &deltallm_providers::Providers,
    provider: &str,
    client: serde_json::Value,
) -> (Vec<String>, Option<Usage>, serde_json::Value) {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(sse_with_usage()).mount(&server).await;
    let c = conn(provider, &format!("{}/v1", server.uri()), json!({"model": "m"}), None);
    let client = bytes(&client);
    let Reply::Stream(stream) = providers.call(&c, Operation::Chat, &body(&client), None).await.unwrap() else {
        panic!("expected a stream")
    };
    let usage = stream.usage();
    let chunks: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(stream)
        .await
        .into_iter()
        .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
        .collect();
    (chunks, usage.get(), json_body(&only_request(&server).await))
}

#[tokio::test]
async fn streams_ask_for_usage_so_they_can_be_priced() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    // Client did not ask: the gateway asks (keeping the client's other options) and hides the extra chunk.
    let (chunks, usage, sent) = stream_through(
        "vllm",
        json!({"model": "x", "messages": msgs, "stream": true, "stream_options": {"continuous_usage_stats": false}}),
    )
    .await;
    assert_eq!(sent["stream_options"], json!({"continuous_usage_stats": false, "include_usage": true}));
    assert_eq!(chunks, [r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#]);
    assert_eq!(usage.map(|u| u.total_tokens), Some(6));

    // Client asked: body unchanged, usage chunk forwarded.
    let (chunks, _, sent) = stream_through(
        "openai",
        json!({"model": "x", "messages": msgs, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(chunks.len(), 2, "{chunks:?}");

    // Providers not known to accept the option get the client's body as sent.
    let (chunks, usage, sent) = stream_through("ollama", json!({"model": "x", "messages": msgs, "stream": true})).await;
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(chunks.len(), 2, "nothing hidden when nothing was injected");
    assert_eq!(usage.map(|u| u.total_tokens), Some(6));
}

/// The direct client and reqwest (proxies, multipart, probes) put the same
/// request on the wire and read the same answer, JSON and streamed, errors too.
#[tokio::test]
async fn both_clients_speak_the_same_wire() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "3")
                .set_body_json(json!({"error": {"message": "slow down"}})),
        )
        .mount(&server)
        .await;
    let c = conn("vllm", &format!("{}/v1", server.uri()), json!({"model": "m"}), None);
    let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}));
    let embed = bytes(&json!({"model": "x", "input": "hi"}));
    let mut sent = Vec::new();
    for p in [providers(), reqwest_providers()] {
        let (value, usage) = json_reply(p.call(&c, Operation::Chat, &body(&client), None).await.unwrap());
        assert_eq!(value, completion());
        assert_eq!(usage.map(|u| u.total_tokens), Some(11));
        let err = p.call(&c, Operation::Embeddings, &body(&embed), None).await.unwrap_err();
        assert_eq!((err.class, err.retry_after), (ErrorClass::RateLimit, Some(std::time::Duration::from_secs(3))));
        let (chunks, _, req) =
            stream_through_with(&p, "vllm", json!({"model": "x", "messages": [], "stream": true})).await;
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        sent.push(req);
    }
    assert_eq!(sent[0], sent[1], "identical upstream bodies");
    let reqs = server.received_requests().await.unwrap();
    let auth: Vec<_> =
        reqs.iter().map(|r| r.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned())).collect();
    assert!(auth.iter().all(|a| a.as_deref() == Some(format!("Bearer {KEY}").as_str())), "{auth:?}");
    let agents: Vec<_> =
        reqs.iter().map(|r| r.headers.get("user-agent").map(|v| v.to_str().unwrap().to_owned())).collect();
    assert!(agents.iter().all(|a| a.as_deref().is_some_and(|a| a.starts_with("deltallm/"))), "{agents:?}");
}
