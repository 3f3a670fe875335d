//! RUN-22 health probes.

use std::time::Duration;

use deltallm_providers::ErrorClass;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn openai_probe_lists_models_with_auth() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("openai", &format!("{}/v1", server.uri()), json!({"model": "gpt-4o"}), None);
    let probe = providers().probe(&c, DEADLINE).await.unwrap();
    assert_eq!(probe.status, Some(200));
    assert_eq!(probe.message, "openai health check returned 200");
    assert_eq!(header(&only_request(&server).await, "authorization"), Some(format!("Bearer {KEY}").as_str()));
}

#[tokio::test]
async fn failed_probe_names_provider_and_status() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/models"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let c = conn("groq", &format!("{}/v1", server.uri()), json!({"model": "llama"}), None);
    let err = providers().probe(&c, DEADLINE).await.unwrap_err();
    assert_eq!(
        (err.message.as_str(), err.status, err.class),
        ("groq health check returned 401", Some(401), ErrorClass::UpstreamClient)
    );
    let c = conn("groq", &format!("{}/v2", server.uri()), json!({"model": "llama"}), None);
    let err = providers().probe(&c, DEADLINE).await.unwrap_err();
    assert_eq!((err.message.as_str(), err.class), ("groq health check returned 503", ErrorClass::Upstream5xx));
}

#[tokio::test]
async fn provider_specific_probe_auth() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(3)
        .mount(&server)
        .await;
    let p = providers();
    p.probe(&conn("anthropic", &format!("{}/anthropic/v1", server.uri()), json!({"model": "claude"}), None), DEADLINE)
        .await
        .unwrap();
    p.probe(
        &conn("gemini", &format!("{}/gemini/v1beta", server.uri()), json!({"model": "gemini-pro"}), None),
        DEADLINE,
    )
    .await
    .unwrap();
    p.probe(
        &conn(
            "azure",
            &format!("{}/azure/openai/v1", server.uri()),
            json!({"model": "dep", "api_version": "2024-10-21"}),
            None,
        ),
        DEADLINE,
    )
    .await
    .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].url.path(), "/anthropic/v1/models");
    assert_eq!(requests[0].headers.get("x-api-key").unwrap(), KEY);
    assert_eq!(requests[0].headers.get("anthropic-version").unwrap(), "2023-06-01");
    assert_eq!(requests[1].url.path(), "/gemini/v1beta/models");
    assert_eq!(requests[1].url.query(), None);
    assert_eq!(requests[1].headers.get("x-goog-api-key").unwrap(), KEY);
    assert_eq!(requests[2].url.path(), "/azure/openai/v1/models");
    assert_eq!(requests[2].headers.get("api-key").unwrap(), KEY);
    assert!(requests[2].url.query_pairs().any(|(k, v)| k == "api-version" && v == "2024-10-21"));
}

#[tokio::test]
async fn bedrock_probe_checks_credentials_only() {
    let p = providers();
    let ready = conn(
        "bedrock",
        "http://127.0.0.1:9",
        json!({"model": "bedrock/x", "aws_access_key_id": "AKIA", "aws_secret_access_key": "s", "region": "eu-west-1"}),
        None,
    );
    assert_eq!(p.probe(&ready, DEADLINE).await.unwrap().status, None);
    let missing =
        conn("bedrock", "http://127.0.0.1:9", json!({"model": "bedrock/x", "aws_access_key_id": "AKIA"}), None);
    assert!(p.probe(&missing, DEADLINE).await.is_err());
}
