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

/// A gateway with one chat deployment behind a wiremock upstream.
async fn with_chat_deployment(settings: deltallm_core::GatewaySettings) -> (TestApp, MockServer, TestDb) {
    let db = TestDb::create(Backend::Sqlite).await.unwrap();
    let upstream = MockServer::start().await;
    let completion = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion))
        .mount(&upstream)
        .await;
    let app = TestApp::start(&db.url, settings).await;
    let body = json!({"model_name": "gpt", "deployment_id": "gpt-a",
        "deltallm_params": {"provider": "openai", "model": "up", "api_base": format!("{}/v1", upstream.uri()), "api_key": "sk-up"},
        "model_info": {"mode": "chat"}});
    let (status, answer) = app.post("/ui/api/models", &body).await;
    assert_eq!(status, 200, "{answer}");
    (app, upstream, db)
}

const CHAT: &str = r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#;

fn chat_request(extra_headers: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
}

/// A chat request's head alone, announcing a body of `length` bytes.
fn head_announcing(key: &str, length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Reads whole responses (content-length framed) from a raw connection.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(base: &str) -> Self {
        let stream = TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next response: status, lower-cased head, body.
    async fn response(&mut self) -> (u16, String, String) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap().to_ascii_lowercase();
                let interim = head.starts_with("http/1.1 1");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .or(interim.then_some(0))
                    .expect("content-length framed response");
                if self.buf.len() >= end + 4 + length {
                    let body = String::from_utf8(self.buf[end + 4..end + 4 + length].to_vec()).unwrap();
                    self.buf.drain(..end + 4 + length);
                    let status = head[9..12].parse().unwrap();
                    return (status, head, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "connection closed before a whole response; have {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True once the server has closed the connection (after what it sent).
    async fn closed(&mut self) -> bool {
        closed_within(&mut self.stream, Duration::from_secs(3)).await.is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_other_routes_share_a_connection_in_order() {
    let (app, _upstream, _db) = with_chat_deployment(test_settings()).await;
    let mut c = RawClient::connect(&app.base).await;
    // Two chats in one write, then a route the JSON path does not take, then a chat again.
    let models = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\n\r\n");
    c.send(format!("{}{}{}{}", chat_request(""), chat_request(""), models, chat_request("")).as_bytes()).await;
    for expected in ["chat", "chat", "models", "chat"] {
        let (status, head, body) = c.response().await;
        assert_eq!(status, 200, "{expected}: {body}");
        match expected {
            "chat" => {
                assert!(head.contains("x-deltallm-route-deployment: gpt-a"), "{head}");
                assert!(head.contains("content-type: application/json"), "{head}");
                assert!(head.contains("\r\ndate: "), "{head}");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&body).unwrap()["choices"][0]["message"]["content"],
                    "hi"
                );
            }
            _ => assert!(body.contains("\"gpt\""), "{body}"),
        }
    }
    // A request that arrives a few bytes at a time, the end of its head split
    // across reads in every possible place (on a new connection: the one
    // above went to hyper with the models request).
    let mut c = RawClient::connect(&app.base).await;
    for piece in [1, 2, 3, 7] {
        let request = chat_request("");
        for part in request.as_bytes().chunks(piece) {
            c.send(part).await;
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        let (status, _, body) = c.response().await;
        assert_eq!(status, 200, "pieces of {piece}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn chunked_bodies_and_expect_continue_are_served_like_any_other_request() {
    let (app, _upstream, _db) = with_chat_deployment(test_settings()).await;
    let mut c = RawClient::connect(&app.base).await;
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{CHAT}\r\n0\r\n\r\n",
        CHAT.len()
    );
    c.send(chunked.as_bytes()).await;
    let (status, _, body) = c.response().await;
    assert_eq!(status, 200, "{body}");
    // The same connection still serves a plain request after the hand-over.
    c.send(chat_request("").as_bytes()).await;
    assert_eq!(c.response().await.0, 200);

    let mut c = RawClient::connect(&app.base).await;
    c.send(chat_request("Expect: 100-continue\r\n").as_bytes()).await;
    // hyper answers 100 first; the final answer is the chat.
    let (status, _, _) = c.response().await;
    assert_eq!(status, 100);
    let (status, _, body) = c.response().await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn connection_close_wrong_keys_and_oversized_bodies_get_whole_answers() {
    let mut settings = test_settings();
    settings.max_request_body_bytes = 1024;
    let (app, _upstream, _db) = with_chat_deployment(settings).await;

    // `Connection: close` is honoured after the answer.
    let mut c = RawClient::connect(&app.base).await;
    c.send(chat_request("Connection: close\r\n").as_bytes()).await;
    let (status, head, _) = c.response().await;
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");
    assert!(c.closed().await, "connection left open after Connection: close");

    // A wrong key is a 401 in the OpenAI shape, and the connection serves on.
    let mut c = RawClient::connect(&app.base).await;
    let wrong = chat_request("").replace(MASTER_KEY, "sk-wrong");
    c.send(wrong.as_bytes()).await;
    let (status, _, body) = c.response().await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["type"], "authentication_error");
    c.send(chat_request("").as_bytes()).await;
    assert_eq!(c.response().await.0, 200);

    // A body over the limit: the whole 413 arrives even though the body is
    // still being sent, then the connection closes.
    let mut c = RawClient::connect(&app.base).await;
    let big = "x".repeat(200_000);
    c.send(head_announcing(MASTER_KEY, big.len()).as_bytes()).await;
    let _ = c.stream.write_all(&big.as_bytes()[..100_000]).await;
    let (status, head, body) = c.response().await;
    assert_eq!(status, 413, "{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.contains("max_request_body_bytes"), "{body}");
    assert!(c.closed().await);

    // A wrong key is reported before an oversized body, as behind hyper.
    let mut c = RawClient::connect(&app.base).await;
    c.send(head_announcing("sk-wrong", big.len()).as_bytes()).await;
    let (status, head, _) = c.response().await;
    assert_eq!(status, 401);
    assert!(head.contains("connection: close"), "{head}");

    // A malformed head is refused with a 400, as before.
    let mut c = RawClient::connect(&app.base).await;
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost x\r\n\r\n").await;
    let mut seen = closed_within(&mut c.stream, Duration::from_secs(3)).await.expect("closed");
    seen.truncate(12);
    assert_eq!(String::from_utf8_lossy(&seen), "HTTP/1.1 400");
    app.stop().await;
}
