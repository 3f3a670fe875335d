//! OpenAI-compatible streaming against a raw TCP upstream that controls
//! exactly when each byte is written.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deltallm_providers::{ErrorClass, Operation, Reply};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::*;

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";

/// Serve one connection: read the request, then hand the socket to `script`.
async fn upstream<F, Fut>(script: F) -> String
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        read_request(&mut sock).await.expect("a request");
        script(sock).await;
    });
    format!("http://{addr}/v1")
}

fn stream_request() -> Vec<u8> {
    bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
}

async fn start_stream(
    base: &str,
    extra: serde_json::Value,
    deadline: Option<Duration>,
) -> Result<Reply, deltallm_providers::Error> {
    let mut params = json!({"model": "gpt-4o"});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let c = conn("openai", base, params, None);
    let client = stream_request();
    providers().call(&c, Operation::Chat, &body(&client), deadline).await
}

#[tokio::test]
async fn chunks_are_forwarded_as_they_arrive() {
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let sent_rest = Arc::new(AtomicBool::new(false));
    let flag = sent_rest.clone();
    let base = upstream(move |mut s| async move {
        s.write_all(SSE_HEAD).await.unwrap();
        // The first event arrives split across two TCP writes.
        s.write_all(b"data: {\"id\":\"c1\",\"choices\":[{\"ind").await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"ex\":0,\"delta\":{\"content\":\"A\"}}]}\n\n").await.unwrap();
        s.flush().await.unwrap();
        // Hold the rest back until the client has seen the first chunk (or 5 s pass).
        let _ = tokio::time::timeout(Duration::from_secs(5), gate_rx).await;
        flag.store(true, Ordering::SeqCst);
        s.write_all(b": keep-alive\r\n\r\nevent: ignored\r\ndata: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"B\"}}]}\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(b"data: {\"id\":\"c3\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\ndata: [DONE]\n\n").await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;

    let Reply::Stream(mut stream) = start_stream(&base, json!({}), Some(Duration::from_secs(5))).await.unwrap() else {
        panic!("expected a stream")
    };
    let usage = stream.usage();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"A"}}]}"#);
    assert!(!sent_rest.load(Ordering::SeqCst), "first chunk must be forwarded before the upstream sends the rest");
    assert!(usage.get().is_none() && !usage.is_final());
    gate_tx.send(()).unwrap();

    let rest: Vec<String> = stream.map(|i| String::from_utf8(i.unwrap().to_vec()).unwrap()).collect().await;
    // The client did not ask for usage, so the usage-only chunk the gateway
    // requested for pricing is read but not forwarded.
    assert_eq!(rest, [r#"{"id":"c2","choices":[{"index":0,"delta":{"content":"B"}}]}"#]);
    assert!(usage.is_final());
    assert_eq!(usage.get().map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens)), Some((4, 2, 6)));
}

#[tokio::test]
async fn connection_closed_before_done_is_an_error() {
    let base = upstream(|mut s| async move {
        s.write_all(SSE_HEAD).await.unwrap();
        s.write_all(b"data: {\"n\":1}\n\ndata: {\"n\":2}\n\n").await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let (items, usage) = collect(start_stream(&base, json!({}), None).await.unwrap()).await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].as_deref().unwrap(), r#"{"n":1}"#);
    assert_eq!(items[1].as_deref().unwrap(), r#"{"n":2}"#);
    let err = items[2].as_ref().unwrap_err();
    assert_eq!((err.class, err.message.as_str()), (ErrorClass::Transport, "upstream stream ended before completion"));
    assert!(err.health_affecting());
    assert!(usage.is_final() && usage.get().is_none());
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    let (closed_tx, closed_rx) = oneshot::channel::<Duration>();
    let base = upstream(move |mut s| async move {
        s.write_all(SSE_HEAD).await.unwrap();
        s.write_all(b"data: {\"n\":1}\n\n").await.unwrap();
        let started = Instant::now();
        // Keep the stream alive until writes start failing: that is the
        // client hanging up.
        while s.write_all(b": ping\n\n").await.is_ok() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = closed_tx.send(started.elapsed());
    })
    .await;
    let Reply::Stream(mut stream) = start_stream(&base, json!({}), None).await.unwrap() else {
        panic!("expected a stream")
    };
    assert_eq!(&stream.next().await.unwrap().unwrap()[..], br#"{"n":1}"#);
    drop(stream);
    let took = tokio::time::timeout(Duration::from_secs(5), closed_rx).await.unwrap().unwrap();
    assert!(took < Duration::from_secs(5), "upstream saw the hang-up after {took:?}");
}

#[tokio::test]
async fn a_stalled_stream_hits_the_read_timeout() {
    let base = upstream(|mut s| async move {
        s.write_all(SSE_HEAD).await.unwrap();
        s.write_all(b"data: {\"n\":1}\n\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let started = Instant::now();
    let (items, _) = collect(start_stream(&base, json!({"timeout": 1}), None).await.unwrap()).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].as_ref().unwrap_err().class, ErrorClass::Timeout);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn the_read_timeout_bounds_each_gap_not_the_whole_stream() {
    // Four gaps of 400 ms under a 1 s read timeout: 1.6 s in all, never cut.
    let base = upstream(|mut s| async move {
        s.write_all(SSE_HEAD).await.unwrap();
        for n in 1..=4 {
            s.write_all(format!("data: {{\"n\":{n}}}\n\n").as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        s.write_all(b"data: [DONE]\n\n").await.unwrap();
    })
    .await;
    let started = Instant::now();
    let (items, _) = collect(start_stream(&base, json!({"timeout": 1}), None).await.unwrap()).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let payloads: Vec<String> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
}

#[tokio::test]
async fn deadline_bounds_the_wait_for_stream_headers() {
    let base = upstream(|s| async move {
        // Hold the socket open without ever answering.
        let _open = s;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let started = Instant::now();
    let err = start_stream(&base, json!({}), Some(Duration::from_millis(200))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn error_status_on_a_stream_request_is_classified_before_streaming() {
    let base = upstream(|mut s| async move {
        let body = br#"{"error":{"message":"slow down"}}"#;
        let head = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 2\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let err = start_stream(&base, json!({}), None).await.unwrap_err();
    assert_eq!(
        (err.class, err.status, err.retry_after),
        (ErrorClass::RateLimit, Some(429), Some(Duration::from_secs(2)))
    );
    assert_eq!(err.message, "slow down");
}
