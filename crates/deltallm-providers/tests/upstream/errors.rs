//! RUN-11/RUN-12 error mapping on real responses, timeouts and transport failures.

use std::time::{Duration, Instant};

use deltallm_domain::ApiErrorKind;
use deltallm_providers::{Error, ErrorClass, Operation};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

async fn call_with(template: ResponseTemplate, extra: serde_json::Value, deadline: Option<Duration>) -> Error {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(template).expect(1).mount(&server).await;
    let mut params = json!({"model": "gpt-4o"});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let c = conn("openai", &format!("{}/v1", server.uri()), params, None);
    let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}));
    providers().call(&c, Operation::Chat, &body(&client), deadline).await.unwrap_err()
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    let err = call_with(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(json!({"error": {"message": "Rate limit reached for org-123"}})),
        json!({}),
        None,
    )
    .await;
    assert_eq!(
        (err.class, err.status, err.retry_after),
        (ErrorClass::RateLimit, Some(429), Some(Duration::from_secs(7)))
    );
    assert!(err.retryable() && err.health_affecting());
    assert_eq!(err.api_kind(), ApiErrorKind::RateLimited);
    assert!(!err.client_message().contains("org-123"), "upstream account details stay internal");
}

#[tokio::test]
async fn server_error_is_provider_error_503() {
    let err = call_with(ResponseTemplate::new(500).set_body_string("stack trace at worker-3"), json!({}), None).await;
    assert_eq!((err.class, err.status), (ErrorClass::Upstream5xx, Some(500)));
    assert_eq!(err.api_kind(), ApiErrorKind::ServiceUnavailable);
    assert_eq!(err.client_message(), "Provider error: 500");
    assert!(err.health_affecting() && !err.retryable());
    let err = call_with(ResponseTemplate::new(503), json!({}), None).await;
    assert!(err.retryable());
}

#[tokio::test]
async fn client_error_message_passes_through() {
    let err = call_with(
        ResponseTemplate::new(400).set_body_json(
            json!({"error": {"message": "Invalid value for 'n': must be >= 1", "type": "invalid_request_error"}}),
        ),
        json!({}),
        None,
    )
    .await;
    assert_eq!((err.class, err.status), (ErrorClass::UpstreamClient, Some(400)));
    assert_eq!(err.api_kind(), ApiErrorKind::InvalidRequest);
    assert_eq!(err.client_message(), "Invalid value for 'n': must be >= 1");
    assert!(!err.health_affecting() && !err.retryable());
}

#[tokio::test]
async fn context_window_and_content_policy_are_classified() {
    let err = call_with(
        ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "This model's maximum context length is 128000 tokens.", "code": "context_length_exceeded"}})),
        json!({}),
        None,
    )
    .await;
    assert_eq!(err.class, ErrorClass::ContextWindowExceeded);
    let err = call_with(
        ResponseTemplate::new(400)
            .set_body_json(json!({"error": {"message": "The prompt was flagged by our safety system"}})),
        json!({}),
        None,
    )
    .await;
    assert_eq!(err.class, ErrorClass::ContentPolicyViolation);
}

#[tokio::test]
async fn attempt_deadline_cuts_a_slow_upstream() {
    let started = Instant::now();
    let err = call_with(
        ResponseTemplate::new(200).set_body_json(json!({})).set_delay(Duration::from_secs(3)),
        json!({}),
        Some(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(err.class, ErrorClass::Timeout);
    assert_eq!(err.api_kind(), ApiErrorKind::Timeout);
    assert!(err.retryable() && err.health_affecting());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn deployment_read_timeout_applies_without_deadline() {
    let started = Instant::now();
    let err = call_with(
        ResponseTemplate::new(200).set_body_json(json!({})).set_delay(Duration::from_secs(4)),
        json!({"timeout": 1}),
        None,
    )
    .await;
    assert_eq!(err.class, ErrorClass::Timeout, "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn refused_connection_is_transport_without_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let c = conn("openai", &format!("http://127.0.0.1:{port}/v1"), json!({"model": "m"}), None);
    let client = bytes(&json!({"model": "x", "messages": []}));
    let err = providers().call(&c, Operation::Chat, &body(&client), None).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transport, "{err:?}");
    assert_eq!(err.api_kind(), ApiErrorKind::ServiceUnavailable);
    assert!(err.retryable() && err.health_affecting());
    assert!(!err.message.contains("http://"), "URL leaked into message: {}", err.message);
    assert!(!err.message.contains(KEY));
}
