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
        direct_plain_http: false,
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
