//! The gateway's HTTP server (`deltallm_http::serve`): slow or idle clients
//! are disconnected after the request-head timeout, and a shutdown lets
//! in-flight requests finish while it refuses new connections.

use std::time::{Duration, Instant};

use deltallm_e2e::{Backend, MASTER_KEY, TestApp, TestDb, test_settings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A second server for `app`'s gateway, with its own options and shutdown.
async fn serve(
    app: &TestApp,
    options: deltallm_http::ServerOptions,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = deltallm_http::GatewayService::new(app.gateway.clone());
    let server = tokio::spawn(deltallm_http::serve(listener, service, options, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

/// Reads until the peer closes; `None` if it is still open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let app = TestApp::start(&db.url, test_settings()).await;
    let options = deltallm_http::ServerOptions { header_read_timeout: Some(Duration::from_millis(700)) };
    let (addr, _stop, _server) = serve(&app, options).await;

    // Half a request head, then silence.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let answer = closed_within(&mut slow, Duration::from_secs(5)).await.expect("still open after 5 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "closed after {waited:?}, before the timeout");
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || text.starts_with("HTTP/1.1 408"), "unexpected answer {text:?}");

    // A keep-alive connection that went idle after a complete exchange is closed too.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await.is_some(), "idle connection kept open");

    // Without a timeout the same half head keeps its connection.
    let (addr, _stop, _server) = serve(&app, deltallm_http::ServerOptions { header_read_timeout: None }).await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_millis(1500)).await.is_none(), "closed without a timeout");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let upstream = MockServer::start().await;
    let completion = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion).set_delay(Duration::from_millis(800)))
        .mount(&upstream)
        .await;
    let app = TestApp::start(&db.url, test_settings()).await;
    let body = json!({"model_name": "gpt", "deployment_id": "gpt-a",
        "deltallm_params": {"provider": "openai", "model": "up", "api_base": format!("{}/v1", upstream.uri()), "api_key": "sk-up"},
        "model_info": {"mode": "chat"}});
    let (status, answer) = app.post("/ui/api/models", &body).await;
    assert_eq!(status, 200, "{answer}");
    let (addr, stop, server) = serve(&app, deltallm_http::ServerOptions::default()).await;

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(
        client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]}))
            .send(),
    );
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();

    let resp = in_flight.await.unwrap().expect("the in-flight request was cut");
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "late");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve did not return").unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await.is_some(), "idle connection left open");
    assert!(TcpStream::connect(&addr).await.is_err(), "a new connection was accepted after shutdown");
    app.stop().await;
}
