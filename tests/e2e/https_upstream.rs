//! HTTPS upstreams (every hosted provider). Chat goes through the direct
//! client over rustls, health probes through reqwest. A TLS server on
//! loopback with a certificate from a private CA: trusted through
//! `upstream_extra_root_certs_pem` (`general_settings.upstream_ca_bundle`),
//! refused without it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// What the upstream saw: per request its request line, authorization
/// header and body; and how many TLS handshakes it completed.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<(String, String, Value)>>>,
    handshakes: Arc<AtomicUsize>,
}

impl Seen {
    fn requests(&self) -> Vec<(String, String, Value)> {
        self.requests.lock().unwrap().clone()
    }
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// How the upstream treats a connection after each answer.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    /// Keep it open for the next request.
    KeepAlive,
    /// Close it (`close_notify`, then FIN) without announcing that in the
    /// answer, as an upstream's idle timeout does between requests.
    Close,
}

/// An HTTPS upstream on loopback: `GET /v1/models`, and chat completions as
/// JSON or, for `"stream": true`, as chunked SSE in separate TLS records.
async fn https_upstream(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    after: AfterAnswer,
) -> (String, Seen) {
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
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            // Events are small writes: without this, Nagle holds each one
            // until the gateway acknowledges the last, and they merge.
            tcp.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                // A refused handshake (the gateway not trusting the CA) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                log.handshakes.fetch_add(1, Ordering::SeqCst);
                while let Some((head, body)) = read_request(&mut tls).await {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let auth = header_of(&head, "authorization").unwrap_or_default().to_owned();
                    let stream = body["stream"] == true;
                    log.requests.lock().unwrap().push((line.clone(), auth, body));
                    if line.starts_with("GET /v1/models ") {
                        let answer = r#"{"object":"list","data":[]}"#;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                    } else if stream {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        for piece in ["over", " tls"] {
                            let event = format!(
                                "data: {}\n\n",
                                json!({"id": "chatcmpl-tls", "object": "chat.completion.chunk", "created": 1, "model": "up",
                                       "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
                            );
                            let _ = tls.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await;
                            let _ = tls.flush().await;
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                        let usage = format!(
                            "data: {}\n\ndata: [DONE]\n\n",
                            json!({"id": "chatcmpl-tls", "object": "chat.completion.chunk", "created": 1, "model": "up",
                                   "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
                        );
                        let _ = tls.write_all(format!("{:x}\r\n{usage}\r\n0\r\n\r\n", usage.len()).as_bytes()).await;
                    } else {
                        let answer = json!({"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "up",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
                        .to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                    }
                    let _ = tls.flush().await;
                    if after == AfterAnswer::Close {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

async fn deploy(app: &TestApp, api_base: &str) {
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "gpt-tls", "deployment_id": "gpt-tls-1",
                    "deltallm_params": {"provider": "openai", "model": "gpt-4o-mini", "api_base": api_base, "api_key": "sk-tls"},
                    "model_info": {"mode": "chat", "input_cost_per_token": 0.000001}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

async fn chat(app: &TestApp, stream: bool) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "gpt-tls", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// An HTTPS upstream and a gateway that trusts its CA, with `gpt-tls` deployed on it.
async fn trusted_upstream(after: AfterAnswer) -> (TestDb, TestApp, Seen) {
    let (ca_pem, cert, key) = private_ca();
    let (base, seen) = https_upstream(cert, key, after).await;
    let db = TestDb::create(deltallm_e2e::Backend::Sqlite).await.unwrap();
    let mut settings = test_settings();
    settings.upstream_extra_root_certs_pem = Some(ca_pem.into_bytes());
    let app = TestApp::start(&db.url, settings).await;
    deploy(&app, &base).await;
    (db, app, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_signed_by_a_configured_ca_is_called() {
    let (db, app, seen) = trusted_upstream(AfterAnswer::KeepAlive).await;

    let resp = chat(&app, false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-deltallm-route-deployment"], "gpt-tls-1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over tls");
    let requests = seen.requests();
    assert_eq!(requests.len(), 1);
    let (line, auth, sent) = &requests[0];
    assert_eq!(line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(auth, "Bearer sk-tls");
    assert_eq!(sent["model"], "gpt-4o-mini");
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(1).await.unwrap();
    assert_eq!((rows[0].status.as_str(), rows[0].provider.as_str(), rows[0].total_tokens), ("success", "openai", 10));

    // The health probe takes the other client (reqwest), which trusts the CA too.
    let (s, probe) = app.post("/ui/api/models/gpt-tls-1/health-check", &json!({})).await;
    assert_eq!((s, &probe["healthy"], &probe["status_code"]), (200, &json!(true), &json!(200)), "{probe}");
    assert_eq!(seen.requests().last().unwrap().0, "GET /v1/models HTTP/1.1");
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connections_are_reused_and_streams_arrive_piece_by_piece() {
    let (db, app, seen) = trusted_upstream(AfterAnswer::KeepAlive).await;

    for _ in 0..3 {
        assert_eq!(chat(&app, false).await.status(), 200);
    }
    let mut resp = chat(&app, true).await;
    assert_eq!(resp.status(), 200);
    let mut pieces = Vec::new();
    while let Some(piece) = resp.chunk().await.unwrap() {
        pieces.push(String::from_utf8(piece.to_vec()).unwrap());
    }
    let text = pieces.concat();
    assert!(pieces.len() >= 2, "the events arrived as they were sent, not as one buffered body: {pieces:?}");
    let contents: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(contents, "over tls");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(seen.requests().len(), 4);
    assert_eq!(seen.handshakes(), 1, "four calls in a row share one TLS connection");
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(1).await.unwrap();
    assert_eq!((rows[0].status.as_str(), rows[0].total_tokens), ("success", 9), "the stream's usage is recorded");
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_connection_the_upstream_closed_while_idle_is_not_reused() {
    let (db, app, seen) = trusted_upstream(AfterAnswer::Close).await;

    for _ in 0..3 {
        assert_eq!(chat(&app, false).await.status(), 200);
        // Time for the upstream's close to reach the idle pooled connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.requests().len(), 3, "no request was lost on a closed connection");
    assert_eq!(seen.handshakes(), 3, "each call found the previous connection closed and opened a new one");
    let (_, health) = app.get("/health/deployments?model=gpt-tls").await;
    assert_eq!(health["deployments"][0]["last_error"], Value::Null, "no attempt failed: {health}");
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_unknown_ca_is_refused_before_any_request() {
    let (_, cert, key) = private_ca();
    let (base, seen) = https_upstream(cert, key, AfterAnswer::KeepAlive).await;
    let db = TestDb::create(deltallm_e2e::Backend::Sqlite).await.unwrap();
    let app = TestApp::start(&db.url, test_settings()).await;
    deploy(&app, &base).await;

    let resp = chat(&app, false).await;
    assert_eq!(resp.status(), 503, "a certificate the gateway cannot verify is a transport failure");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(seen.requests().is_empty(), "no request was sent over the unverified connection");
    // The client gets the generic message; the operator sees why.
    let (_, health) = app.get("/health/deployments?model=gpt-tls").await;
    let last_error = health["deployments"][0]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("invalid peer certificate"), "the deployment's last error says why: {health}");
    // The probe (reqwest) refuses it as well.
    let (_, probe) = app.post("/ui/api/models/gpt-tls-1/health-check", &json!({})).await;
    assert_eq!(probe["healthy"], false, "{probe}");
    assert!(seen.requests().is_empty());
    app.stop().await;
    db.cleanup().await;
}
