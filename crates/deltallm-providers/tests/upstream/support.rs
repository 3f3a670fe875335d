//! Shared fixtures.

use std::time::Duration;

use deltallm_providers::{Connection, HttpSettings, Providers, Reply, RequestBody};
use futures_util::StreamExt;
use serde_json::Value;
use wiremock::{MockServer, Request};

pub const KEY: &str = "sk-test-canary-4711";

pub fn providers() -> Providers {
    Providers::new(&HttpSettings { read_timeout: Duration::from_secs(30), ..HttpSettings::default() }).unwrap()
}

/// Providers that send every call through reqwest (the HTTPS and proxy path).
pub fn reqwest_providers() -> Providers {
    Providers::new(&HttpSettings {
        read_timeout: Duration::from_secs(30),
        direct_client: false,
        ..HttpSettings::default()
    })
    .unwrap()
}

/// A connection for `provider` with the given params merged over
/// `{api_key: KEY, api_base}`.
pub fn conn(provider: &str, api_base: &str, extra: Value, defaults: Option<Value>) -> Connection {
    let mut params = serde_json::json!({"api_key": KEY, "api_base": api_base});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            params.as_object_mut().unwrap().remove(k);
        } else {
            params[k] = v.clone();
        }
    }
    let defaults = defaults.map(|d| d.as_object().cloned().unwrap());
    Connection::build(provider, params.as_object().unwrap(), defaults.as_ref()).unwrap()
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

pub fn body(bytes: &[u8]) -> RequestBody<'_> {
    RequestBody::parse(bytes).unwrap()
}

pub async fn only_request(server: &MockServer) -> Request {
    let mut requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "expected exactly one upstream request");
    requests.remove(0)
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).map(|v| v.to_str().unwrap())
}

pub fn json_body(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

pub fn json_reply(reply: Reply) -> (Value, Option<deltallm_providers::Usage>) {
    match reply {
        Reply::Json { body, usage } => (serde_json::from_slice(&body).unwrap(), usage),
        other => panic!("expected JSON reply, got {other:?}"),
    }
}

/// Drain a stream reply into its items, payloads as strings.
pub async fn collect(
    reply: Reply,
) -> (Vec<Result<String, deltallm_providers::Error>>, deltallm_providers::StreamUsage) {
    let Reply::Stream(mut stream) = reply else { panic!("expected a stream reply") };
    let usage = stream.usage();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.map(|b| String::from_utf8(b.to_vec()).unwrap()));
    }
    (items, usage)
}

/// Read one HTTP/1.1 request (head and `content-length` body) off `sock`;
/// `None` if the client closed the connection before sending one.
pub async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            assert!(buf.is_empty(), "client closed in the middle of a request");
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.unwrap();
                assert!(n > 0, "client closed in the middle of a request body");
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(buf);
        }
    }
}
