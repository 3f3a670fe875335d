//! Gemini adapter: key in a header, never in the URL.

use deltallm_providers::{ErrorClass, Operation};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

#[tokio::test]
async fn chat_translates_and_keeps_key_out_of_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-2.0-flash:generateContent"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi there"}]}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
            "modelVersion": "gemini-2.0-flash-001"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("gemini", &format!("{}/v1beta", server.uri()), json!({"model": "gemini/gemini-2.0-flash"}), None);
    let client = bytes(
        &json!({"model": "g", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}], "temperature": 0}),
    );

    let (value, usage) = json_reply(providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap());

    let req = only_request(&server).await;
    assert_eq!(req.url.query(), None, "no ?key= in the URL");
    assert_eq!(header(&req, "x-goog-api-key"), Some(KEY));
    assert!(header(&req, "authorization").is_none());
    assert_eq!(
        json_body(&req),
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
            "systemInstruction": {"parts": [{"text": "S"}]},
            "generationConfig": {"temperature": 0}
        })
    );
    assert_eq!(
        value["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length"}])
    );
    assert_eq!(value["model"], "gemini-2.0-flash-001");
    assert_eq!(usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((5, 3, 8)));
}

#[tokio::test]
async fn upstream_error_never_contains_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}})))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("gemini", &format!("{}/v1beta", server.uri()), json!({"model": "gemini-pro"}), None);
    let client = bytes(&json!({"messages": [{"role": "user", "content": "x"}]}));
    let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
    assert_eq!(
        (err.class, err.client_message().as_str()),
        (ErrorClass::UpstreamClient, "API key not valid. Please pass a valid API key.")
    );
    assert!(!format!("{err:?}").contains(KEY));
}

#[tokio::test]
async fn streaming_is_rejected_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let c = conn("gemini", &format!("{}/v1beta", server.uri()), json!({"model": "gemini-pro"}), None);
    let client = bytes(&json!({"messages": [{"role": "user", "content": "x"}], "stream": true}));
    let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::InvalidRequest);
    assert_eq!(err.api_kind().status(), 400);
}
