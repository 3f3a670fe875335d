//! The direct client for `http://` upstreams on the wire: connection reuse,
//! body framings and upstreams that close connections, against a raw TCP
//! server that counts the connections it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deltallm_providers::{Connection, ErrorClass, Operation, Providers, Reply};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::support::*;

/// What the upstream does with each request it reads.
#[derive(Clone, Copy)]
enum Close {
    /// Keep the connection for the next request.
    Never,
    /// Close right after answering, without saying so (an idle timeout).
    Silently,
}

struct Upstream {
    base: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Serve `answer(request number)` to every request, on as many connections
/// as the client opens.
async fn upstream(close: Close, answer: fn(usize) -> Vec<u8>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (conns, reqs) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                while read_request(&mut sock).await.is_some() {
                    let n = reqs.fetch_add(1, Ordering::SeqCst);
                    if sock.write_all(&answer(n)).await.is_err() {
                        return;
                    }
                    if matches!(close, Close::Silently) {
                        return;
                    }
                }
            });
        }
    });
    Upstream { base, connections, requests }
}

fn completion(n: usize) -> Value {
    json!({"id": format!("c{n}"), "object": "chat.completion", "choices": [],
           "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
}

fn with_length(n: usize) -> Vec<u8> {
    let body = bytes(&completion(n));
    let mut out =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The body split into chunks of 7 bytes, the first with an extension, and a trailer.
fn chunked(n: usize) -> Vec<u8> {
    let body = bytes(&completion(n));
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for (i, piece) in body.chunks(7).enumerate() {
        let ext = if i == 0 { ";name=value" } else { "" };
        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
    out
}

type Outcome = Result<(Value, Option<deltallm_providers::Usage>), deltallm_providers::Error>;

/// One chat call to a fresh deployment (and so a fresh connection pool).
async fn chat(base: &str) -> Outcome {
    let c = conn("vllm", base, json!({"model": "m"}), None);
    chat_on(&providers(), &c).await
}

async fn chat_on(p: &Providers, c: &Connection) -> Outcome {
    let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}));
    p.call(c, Operation::Chat, &body(&client), Some(Duration::from_secs(5))).await.map(json_reply)
}

#[tokio::test]
async fn sequential_calls_share_one_connection() {
    let up = upstream(Close::Never, with_length).await;
    let (p, c) = (providers(), conn("vllm", &up.base, json!({"model": "m"}), None));
    for n in 0..5 {
        let (json, usage) = chat_on(&p, &c).await.unwrap();
        assert_eq!(json["id"], format!("c{n}"));
        assert_eq!(usage.unwrap().completion_tokens, n as u64);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "keep-alive connection reused");
}

#[tokio::test]
async fn chunked_bodies_are_decoded_and_the_connection_kept() {
    let up = upstream(Close::Never, chunked).await;
    let (p, c) = (providers(), conn("vllm", &up.base, json!({"model": "m"}), None));
    for n in 0..3 {
        let (json, _) = chat_on(&p, &c).await.unwrap();
        assert_eq!(json, completion(n));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_reused() {
    let up = upstream(Close::Silently, with_length).await;
    let (p, c) = (providers(), conn("vllm", &up.base, json!({"model": "m"}), None));
    for n in 0..3 {
        // Give the upstream's close time to arrive, as an idle timeout would.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (json, _) = chat_on(&p, &c).await.unwrap_or_else(|e| panic!("call {n} failed: {e:?}"));
        assert_eq!(json["id"], format!("c{n}"));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
    assert_eq!(up.requests.load(Ordering::SeqCst), 3, "no request sent twice");
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_honoured() {
    let up = upstream(Close::Never, |n| {
        let mut out = with_length(n);
        out.splice(17..17, b"connection: close\r\n".iter().copied());
        out
    })
    .await;
    let (p, c) = (providers(), conn("vllm", &up.base, json!({"model": "m"}), None));
    for _ in 0..2 {
        chat_on(&p, &c).await.unwrap();
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2, "a connection the upstream wants closed is not pooled");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = upstream(Close::Never, |n| {
        let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        out.extend_from_slice(&with_length(n));
        out
    })
    .await;
    let (json, _) = chat(&up.base).await.unwrap();
    assert_eq!(json["id"], "c0");
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_a_transport_error() {
    let up = upstream(Close::Silently, |_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":".to_vec()
    })
    .await;
    let err = chat(&up.base).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transport);
    assert!(err.message.contains("closed before the response was complete"), "{}", err.message);
    assert!(err.retryable());
}

#[tokio::test]
async fn an_upstream_that_answers_nothing_is_a_transport_error() {
    let up = upstream(Close::Silently, |_| Vec::new()).await;
    let err = chat(&up.base).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transport);
    assert!(err.message.contains("closed before a response was received"), "{}", err.message);
}

#[tokio::test]
async fn garbage_instead_of_http_is_a_transport_error() {
    let up = upstream(Close::Silently, |_| b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()).await;
    let err = chat(&up.base).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transport);
    assert!(err.message.contains("invalid HTTP response"), "{}", err.message);
}

#[tokio::test]
async fn chunked_error_bodies_are_classified_with_their_headers() {
    let up = upstream(Close::Never, |_| {
        let body = br#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
        let mut out =
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        out
    })
    .await;
    let (p, c) = (providers(), conn("vllm", &up.base, json!({"model": "m"}), None));
    let err = chat_on(&p, &c).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimit);
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert!(err.message.contains("slow down"), "{}", err.message);
    // The error answer was read to its end, so the connection is reused.
    chat_on(&p, &c).await.unwrap_err();
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_stream_is_forwarded_and_its_connection_reused() {
    let up = upstream(Close::Never, |_| {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for event in [
            "data: {\"id\":\"s\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}}]}\n\n",
            "data: {\"id\":\"s\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ] {
            out.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    })
    .await;
    let c = conn("vllm", &up.base, json!({"model": "m"}), None);
    let p = providers();
    let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": true}));
    for _ in 0..2 {
        let reply = p.call(&c, Operation::Chat, &body(&client), Some(Duration::from_secs(5))).await.unwrap();
        assert!(matches!(reply, Reply::Stream(_)));
        let (items, usage) = collect(reply).await;
        let items: Vec<String> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(items, [r#"{"id":"s","choices":[{"index":0,"delta":{"content":"A"}}]}"#]);
        assert_eq!(usage.get().map(|u| u.total_tokens), Some(3));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "a stream read to its end returns its connection");
}

/// Bodies far larger than a socket buffer, both ways: the request is written
/// in many partial writes while the upstream reads slowly, and the answer
/// arrives in many reads.
#[tokio::test]
async fn large_bodies_cross_in_many_pieces() {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        // Read in small steps with pauses, so the client's writes back up.
        let mut request = Vec::new();
        let mut tmp = [0u8; 16 * 1024];
        let total = loop {
            let n = sock.read(&mut tmp).await.unwrap();
            assert!(n > 0, "client closed early");
            request.extend_from_slice(&tmp[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let len: usize =
                    head.lines().find_map(|l| l.strip_prefix("content-length:")).unwrap().trim().parse().unwrap();
                if request.len() >= end + 4 + len {
                    break len;
                }
            }
            if request.len() % (256 * 1024) < tmp.len() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = seen_tx.send(total);
        let body = bytes(&json!({"id": "big", "object": "chat.completion", "choices": [],
            "filler": "y".repeat(3 * 1024 * 1024)}));
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        sock.write_all(head.as_bytes()).await.unwrap();
        for piece in body.chunks(100 * 1024) {
            sock.write_all(piece).await.unwrap();
        }
    });
    let c = conn("vllm", &base, json!({"model": "m"}), None);
    let content = "x".repeat(4 * 1024 * 1024);
    let client = bytes(&json!({"model": "x", "messages": [{"role": "user", "content": content}]}));
    let reply = providers().call(&c, Operation::Chat, &body(&client), Some(Duration::from_secs(20))).await.unwrap();
    let (json, _) = json_reply(reply);
    assert_eq!(json["id"], "big");
    assert_eq!(json["filler"].as_str().unwrap().len(), 3 * 1024 * 1024);
    assert!(seen_rx.await.unwrap() > 4 * 1024 * 1024, "the whole request body reached the upstream");
}
