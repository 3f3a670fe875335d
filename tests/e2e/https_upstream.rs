//! HTTPS upstreams (every hosted provider) go through reqwest and rustls. A
//! TLS server on loopback with a certificate from a private CA: trusted
//! through `upstream_extra_root_certs_pem` (`general_settings.upstream_ca_bundle`),
//! refused without it.

use std::sync::{Arc, Mutex};

use deltallm_e2e::{MASTER_KEY, TestApp, TestDb, header_of, read_request, test_settings};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A CA's PEM and a server certificate it signed for 127.0.0.1 and localhost.
fn private_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "DeltaLLM test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca.pem(), leaf.der().clone(), key)
}

/// What the upstream received: request line, authorization header, body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// An HTTPS chat upstream on loopback answering one request per connection.
async fn https_upstream(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> (String, Seen) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://127.0.0.1:{}/v1", listener.local_addr().unwrap().port());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                // A refused handshake (the gateway not trusting the CA) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Some((head, body)) = read_request(&mut tls).await else { return };
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let auth = header_of(&head, "authorization").unwrap_or_default().to_owned();
                log.lock().unwrap().push((line, auth, body));
                let answer = json!({"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "up",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (base, seen)
}

async fn deploy_and_chat(app: &TestApp, api_base: &str) -> reqwest::Response {
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "gpt-tls", "deployment_id": "gpt-tls-1",
                    "deltallm_params": {"provider": "openai", "model": "gpt-4o-mini", "api_base": api_base, "api_key": "sk-tls"},
                    "model_info": {"mode": "chat", "input_cost_per_token": 0.000001}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "gpt-tls", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_signed_by_a_configured_ca_is_called() {
    let (ca_pem, cert, key) = private_ca();
    let (base, seen) = https_upstream(cert, key).await;
    let db = TestDb::create(deltallm_e2e::Backend::Sqlite).await.unwrap();
    let mut settings = test_settings();
    settings.upstream_extra_root_certs_pem = Some(ca_pem.into_bytes());
    let app = TestApp::start(&db.url, settings).await;

    let resp = deploy_and_chat(&app, &base).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-deltallm-route-deployment"], "gpt-tls-1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over tls");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let (line, auth, sent) = &seen[0];
        assert_eq!(line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(auth, "Bearer sk-tls");
        assert_eq!(sent["model"], "gpt-4o-mini");
    }
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(1).await.unwrap();
    assert_eq!((rows[0].status.as_str(), rows[0].provider.as_str(), rows[0].total_tokens), ("success", "openai", 10));
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_unknown_ca_is_refused_before_any_request() {
    let (_, cert, key) = private_ca();
    let (base, seen) = https_upstream(cert, key).await;
    let db = TestDb::create(deltallm_e2e::Backend::Sqlite).await.unwrap();
    let app = TestApp::start(&db.url, test_settings()).await;

    let resp = deploy_and_chat(&app, &base).await;
    assert_eq!(resp.status(), 503, "a certificate the gateway cannot verify is a transport failure");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(seen.lock().unwrap().is_empty(), "no request was sent over the unverified connection");
    // The client gets the generic message; the operator sees why.
    let (_, health) = app.get("/health/deployments?model=gpt-tls").await;
    let last_error = health["deployments"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("invalid peer certificate"), "the deployment's last error says why: {health}");
    app.stop().await;
    db.cleanup().await;
}
