//! The OpenAI-compatible proxy over real HTTP against loopback upstreams:
//! forwarding, streaming chunk by chunk, cut streams, cancellation, error
//! mapping, body limits, failover and spend.

use std::time::Duration;

use deltallm_e2e::{MASTER_KEY, TestApp, on_both_backends, test_settings};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn add(app: &TestApp, name: &str, id: &str, provider: &str, api_base: &str, extra: Value) -> Value {
    let mut body = json!({
        "model_name": name,
        "deployment_id": id,
        "deltallm_params": {"provider": provider, "model": format!("up-{id}"), "api_base": api_base, "api_key": "sk-up"},
        "model_info": {"mode": "chat", "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            match (k.as_str(), v) {
                ("model_info", Value::Object(m)) => body["model_info"].as_object_mut().unwrap().extend(m),
                ("deltallm_params", Value::Object(m)) => body["deltallm_params"].as_object_mut().unwrap().extend(m),
                (_, v) => {
                    body[k.as_str()] = v;
                }
            }
        }
    }
    let (s, b) = app.post("/ui/api/models", &body).await;
    assert_eq!(s, 200, "{b}");
    b
}

fn completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})
}

async fn chat(app: &TestApp, body: Value) -> reqwest::Response {
    app.client.post(app.url("/v1/chat/completions")).bearer_auth(MASTER_KEY).json(&body).send().await.unwrap()
}

on_both_backends!(chat_is_forwarded_and_spend_recorded, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-up"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(1)
        .mount(&upstream)
        .await;
    let app = TestApp::start(&url, test_settings()).await;
    add(
        &app,
        "gpt",
        "gpt-a",
        "openai",
        &format!("{}/v1", upstream.uri()),
        json!({"model_info": {"default_params": {"temperature": 0.1, "top_p": 0.5}}}),
    )
    .await;

    let resp = chat(&app, json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}], "temperature": 0.9, "metadata": {"user_ref": "kept-local"}})).await;
    if resp.status() != 200 {
        panic!("status {} body {}", resp.status(), resp.text().await.unwrap());
    }
    let h = resp.headers().clone();
    assert_eq!(h["x-deltallm-route-group"], "gpt");
    assert_eq!(h["x-deltallm-route-deployment"], "gpt-a");
    assert_eq!(h["x-deltallm-route-strategy"], "simple-shuffle");
    assert_eq!(h["x-deltallm-route-fallback-used"], "false");
    let overhead: u64 = h["x-deltallm-overhead-us"].to_str().unwrap().parse().unwrap();
    assert!(overhead < 1_000_000, "overhead {overhead}us");
    assert_eq!(resp.json::<Value>().await.unwrap(), completion());

    let sent: Value = upstream.received_requests().await.unwrap()[0].body_json().unwrap();
    assert_eq!(sent["model"], "up-gpt-a", "upstream model id replaces the public name");
    assert!(sent.get("metadata").is_none(), "client metadata never goes upstream");
    assert_eq!(sent["temperature"], 0.9, "client value wins over default_params");
    assert_eq!(sent["top_p"], 0.5, "absent default params are added");

    let (s, summary) = app.get("/ui/api/spend/summary?group_by=model").await;
    assert_eq!(s, 200);
    let row = &summary["data"][0];
    assert_eq!(row["key"], "gpt");
    assert_eq!(row["requests"], 1);
    assert_eq!(row["prompt_tokens"], 100);
    assert!((row["spend"].as_f64().unwrap() - 0.0002).abs() < 1e-12, "{row}");
    let (_, by_provider) = app.get("/ui/api/spend/summary?group_by=provider").await;
    assert_eq!(by_provider["data"][0]["key"], "openai");
    let (s, _) = app.get("/ui/api/spend/summary?group_by=colour").await;
    assert_eq!(s, 400);
    // SPEND-3: the record carries the route decision.
    let record = &app.gateway.store().recent_spend(1).await.unwrap()[0];
    assert_eq!(
        serde_json::from_str::<Value>(&record.metadata).unwrap(),
        json!({"route_group": "gpt", "route_strategy": "simple-shuffle", "selected_deployment": "gpt-a",
               "served_deployment": "gpt-a", "fallback_used": false, "attempts": 1, "route_policy_version": null})
    );
    app.stop().await;
});

on_both_backends!(unpriced_and_failed_requests_are_recorded_too, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/embeddings"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}})))
        .mount(&upstream).await;
    let app = TestApp::start(&url, test_settings()).await;
    let (s, b) = app.post("/ui/api/models", &json!({"model_name": "emb", "deltallm_params": {"provider": "vllm", "model": "e5", "api_base": format!("{}/v1", upstream.uri())}, "model_info": {"mode": "embedding"}})).await;
    assert_eq!(s, 200, "{b}");
    let resp = app
        .client
        .post(app.url("/v1/embeddings"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "emb", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["data"][0]["embedding"], json!([0.1, 0.2]));
    // A chat call on an embedding model is refused before any upstream call (RUN-4).
    let bad = chat(&app, json!({"model": "emb", "messages": []})).await;
    assert_eq!(bad.status(), 400);
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(10).await.unwrap();
    let ok = rows.iter().find(|r| r.status == "success").expect("success row");
    assert_eq!((ok.call_type.as_str(), ok.spend, ok.prompt_tokens), ("embedding", 0.0, 3));
    assert!(ok.unpriced_reason.is_some());
    assert_eq!(ok.provider, "vllm");
    let failed = rows.iter().find(|r| r.status == "failure" && r.model == "emb").expect("failure row");
    assert_eq!((failed.http_status_code, failed.spend), (400, 0.0));
    // A body the gateway cannot even read is still one spend event (SPEND-3).
    let malformed = app
        .client
        .post(app.url("/v1/embeddings"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(10).await.unwrap();
    assert_eq!(rows.len(), 3, "one event per request");
    assert_eq!(
        (rows[0].call_type.as_str(), rows[0].model.as_str(), rows[0].status.as_str(), rows[0].http_status_code),
        ("embedding", "", "failure", 400)
    );
    app.stop().await;
});

on_both_backends!(errors_have_the_openai_shape, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/bad/chat/completions"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": {"message": "messages: field required", "type": "invalid_request_error", "param": "messages", "code": "missing_field"}}),
            ),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/limited/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(json!({"error": {"message": "slow down"}})),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/down/chat/completions"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom: internal stack trace"))
        .mount(&upstream)
        .await;
    let mut settings = test_settings();
    settings.max_request_body_bytes = 4096;
    let app = TestApp::start(&url, settings).await;
    for name in ["bad", "limited", "down"] {
        add(&app, name, name, "vllm", &format!("{}/{name}", upstream.uri()), json!({})).await;
    }
    let (s, b) = app.post("/ui/api/models", &json!({"model_name": "nokey", "deltallm_params": {"provider": "openai", "model": "gpt-4o", "api_base": format!("{}/v1", upstream.uri())}})).await;
    assert_eq!(s, 200, "{b}");

    let expect = |resp: reqwest::Response, status: u16, ty: &'static str, msg: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers().contains_key("x-deltallm-overhead-us"), "every /v1 answer reports overhead");
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], ty, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(msg), "{body}");
        assert!(body["error"].get("code").is_some() && body["error"].get("param").is_some(), "{body}");
        retry
    };
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect(raw("{not json").await.unwrap(), 400, "invalid_request_error", "Invalid JSON").await;
    expect(raw("[1,2]").await.unwrap(), 400, "invalid_request_error", "JSON object").await;
    expect(
        chat(&app, json!({"model": 5, "messages": []})).await,
        400,
        "invalid_request_error",
        "'model' must be a non-empty string",
    )
    .await;
    expect(chat(&app, json!({"messages": []})).await, 400, "invalid_request_error", "'model' is required").await;
    expect(
        chat(&app, json!({"model": "bad", "metadata": "x", "messages": []})).await,
        400,
        "invalid_request_error",
        "'metadata' must be an object",
    )
    .await;
    expect(
        chat(&app, json!({"model": "ghost", "messages": []})).await,
        404,
        "model_not_found",
        "Model 'ghost' is not configured",
    )
    .await;
    let big = json!({"model": "bad", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    expect(chat(&app, big).await, 413, "invalid_request_error", "exceeds the 4096-byte limit").await;
    expect(
        chat(&app, json!({"model": "nokey", "messages": []})).await,
        400,
        "invalid_request_error",
        "Provider API key is missing for selected model",
    )
    .await;
    let upstream_400 = chat(&app, json!({"model": "bad", "messages": []})).await;
    assert_eq!(upstream_400.status(), 400);
    let body: Value = upstream_400.json().await.unwrap();
    assert_eq!(body["error"]["message"], "messages: field required");
    assert_eq!(
        (body["error"]["param"].as_str(), body["error"]["code"].as_str()),
        (Some("messages"), Some("missing_field")),
        "upstream code/param passed on"
    );
    let retry =
        expect(chat(&app, json!({"model": "limited", "messages": []})).await, 429, "rate_limit_error", "").await;
    assert_eq!(retry.as_deref(), Some("7"));
    let down = chat(&app, json!({"model": "down", "messages": []})).await;
    assert_eq!(down.status(), 503);
    let text = down.text().await.unwrap();
    assert!(text.contains("Provider error: 500") && !text.contains("stack trace"), "{text}");
    let anon = app.client.post(app.url("/v1/chat/completions")).json(&json!({"model": "bad"})).send().await.unwrap();
    expect(anon, 401, "authentication_error", "Authentication required").await;
    let models = app.client.get(app.url("/v1/models")).bearer_auth(MASTER_KEY).send().await.unwrap();
    assert!(models.headers().contains_key("x-deltallm-overhead-us"));
    // Admin routes answer an oversized body in their own {"detail"} shape (CONV-1).
    let (s, b) = app.post("/ui/api/models", &json!({"model_name": "x".repeat(5000)})).await;
    assert_eq!(s, 413, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("max_request_body_bytes"), "{b}");
    app.stop().await;
});

on_both_backends!(a_failing_deployment_fails_over_and_cools_down, |url: String| async move {
    let good = MockServer::start().await;
    let bad = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(completion())).mount(&good).await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&bad).await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "grp", "grp-good", "vllm", &format!("{}/v1", good.uri()), json!({})).await;
    add(&app, "grp", "grp-bad", "vllm", &format!("{}/v1", bad.uri()), json!({})).await;
    for _ in 0..20 {
        let resp = chat(&app, json!({"model": "grp", "messages": []})).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-deltallm-route-deployment"], "grp-good");
    }
    // allowed_fails = 2: the 3rd consecutive failure cools the bad one down, after which it gets nothing.
    let hits = bad.received_requests().await.unwrap().len();
    assert_eq!(hits, 3, "the failing deployment is skipped once cooled down");
    let (_, one) = app.get("/ui/api/models/grp-bad").await;
    assert_eq!(one["health"]["in_cooldown"], true);
    assert_eq!(one["healthy"], false);

    // Each record's metadata is its own request's decision: first tries and
    // failovers side by side in the same entry.
    app.gateway.flush_spend().await;
    let records = app.gateway.store().recent_spend(100).await.unwrap();
    assert_eq!(records.len(), 20);
    let (mut first_tries, mut failovers) = (0, 0);
    for r in &records {
        let m: Value = serde_json::from_str(&r.metadata).unwrap();
        assert_eq!(
            (m["route_group"].as_str(), m["served_deployment"].as_str()),
            (Some("grp"), Some("grp-good")),
            "{m}"
        );
        if m["selected_deployment"] == "grp-bad" {
            failovers += 1;
            assert_eq!(m["fallback_used"], true, "{m}");
            assert!(m["attempts"].as_u64().unwrap() >= 2, "{m}");
        } else {
            first_tries += 1;
            assert_eq!((m["fallback_used"].as_bool(), m["attempts"].as_u64()), (Some(false), Some(1)), "{m}");
        }
    }
    assert!(failovers >= 1 && first_tries >= 1, "{failovers} failovers, {first_tries} first tries");
    app.stop().await;
});

/// A one-connection SSE upstream: sends the first chunk, then waits for
/// `release` before the rest (or closes / idles, per `then`).
enum Then {
    Finish,
    Close,
    Hang,
}

async fn sse_upstream(then: Then) -> (String, oneshot::Sender<()>, oneshot::Receiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (closed_tx, closed_rx) = oneshot::channel::<bool>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        deltallm_e2e::read_request(&mut sock).await.expect("a request");
        let mut buf = [0u8; 4096];
        let chunk = |c: &str| {
            let data = format!(
                "data: {}\n\n",
                json!({"id": "s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": c}}]})
            );
            format!("{:x}\r\n{}\r\n", data.len(), data)
        };
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        sock.write_all(chunk("Hel").as_bytes()).await.unwrap();
        match then {
            Then::Finish => {
                let _ = release_rx.await;
                sock.write_all(chunk("lo").as_bytes()).await.unwrap();
                let done = "data: [DONE]\n\n";
                sock.write_all(format!("{:x}\r\n{}\r\n0\r\n\r\n", done.len(), done).as_bytes()).await.unwrap();
                let _ = closed_tx.send(false);
            }
            Then::Close => {
                drop(sock);
                let _ = closed_tx.send(true);
            }
            Then::Hang => {
                // Wait for the gateway to drop the upstream connection.
                let closed = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
                let _ = closed_tx.send(matches!(closed, Ok(Ok(0)) | Ok(Err(_))));
            }
        }
    });
    (base, release_tx, closed_rx)
}

async fn stream_request(app: &TestApp) -> reqwest::Response {
    chat(app, json!({"model": "s", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await
}

on_both_backends!(streaming_forwards_each_chunk_as_it_arrives, |url: String| async move {
    let (base, release, _closed) = sse_upstream(Then::Finish).await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "s", "s-1", "vllm", &base, json!({})).await;
    let resp = stream_request(&app).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.bytes_stream();
    // The first chunk reaches the client while the upstream still holds the rest.
    let first =
        tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("first chunk in time").unwrap().unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.starts_with("data: ") && first.contains("\"Hel\"") && first.ends_with("\n\n"), "{first:?}");
    assert!(!first.contains("lo\""));
    release.send(()).unwrap();
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.contains("\"lo\""), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest:?}");
    app.stop().await;
});

on_both_backends!(a_cut_stream_ends_with_an_error_event, |url: String| async move {
    let (base, _release, closed) = sse_upstream(Then::Close).await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "s", "s-1", "vllm", &base, json!({})).await;
    let resp = stream_request(&app).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(closed.await.unwrap());
    assert!(text.contains("\"Hel\""), "{text}");
    assert!(text.contains("\"code\":\"stream_interrupted\""), "{text}");
    assert!(!text.contains("[DONE]"), "a cut stream must not look complete: {text}");
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(5).await.unwrap();
    assert_eq!(rows[0].error_type.as_deref(), Some("stream_interrupted"));
    app.stop().await;
});

on_both_backends!(a_client_that_leaves_cancels_the_upstream_call, |url: String| async move {
    let (base, _release, closed) = sse_upstream(Then::Hang).await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "s", "s-1", "vllm", &base, json!({})).await;
    let resp = stream_request(&app).await;
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    drop(body);
    assert!(closed.await.unwrap(), "the gateway closed the upstream connection after the client left");
    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(5).await.unwrap();
    assert_eq!(rows[0].status, "client_disconnected");
    app.stop().await;
});

on_both_backends!(a_client_that_leaves_before_the_answer_still_leaves_a_spend_record, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()).set_delay(Duration::from_secs(3)))
        .mount(&upstream)
        .await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "gpt", "gpt-a", "openai", &format!("{}/v1", upstream.uri()), json!({})).await;
    let left = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .timeout(Duration::from_millis(300))
        .json(&json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await;
    assert!(left.is_err(), "the client was meant to give up first");
    // The gateway notices the closed connection and drops the call.
    let mut rows = Vec::new();
    for _ in 0..40 {
        app.gateway.flush_spend().await;
        rows = app.gateway.store().recent_spend(5).await.unwrap();
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 1, "one spend record for the abandoned request");
    assert_eq!(rows[0].status, "client_disconnected");
    assert_eq!(rows[0].http_status_code, 499);
    assert_eq!(rows[0].model, "gpt");
    assert_eq!(rows[0].spend, 0.0);
    app.stop().await;
});

on_both_backends!(an_upstream_that_echoes_the_key_cannot_leak_it, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"message": "Incorrect API key provided: sk-echo-canary-0001", "type": "invalid_request_error"}}),
        ))
        .mount(&upstream)
        .await;
    let app = TestApp::start(&url, test_settings()).await;
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "echo", "deployment_id": "echo", "deltallm_params": {"provider": "openai", "model": "gpt-4o", "api_base": format!("{}/v1", upstream.uri()), "api_key": "sk-echo-canary-0001"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let resp = chat(&app, json!({"model": "echo", "messages": []})).await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("sk-echo-canary-0001"), "{text}");
    assert!(text.contains("Incorrect API key provided: ***REDACTED***"), "{text}");
    let (_, probe) = app.post("/ui/api/models/echo/health-check", &json!({})).await;
    assert!(!probe.to_string().contains("sk-echo-canary-0001"), "{probe}");
    app.stop().await;
});

on_both_backends!(streams_are_priced_from_the_usage_the_gateway_asks_for, |url: String| async move {
    // The mock sends a usage chunk only when asked, like OpenAI does.
    struct UsageWhenAsked;
    impl wiremock::Respond for UsageWhenAsked {
        fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
            let body: Value = req.body_json().unwrap();
            let mut sse = String::from("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n");
            if body["stream_options"]["include_usage"] == true {
                sse.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":50,\"total_tokens\":150}}\n\n");
            }
            sse.push_str("data: [DONE]\n\n");
            ResponseTemplate::new(200).insert_header("content-type", "text/event-stream").set_body_string(sse)
        }
    }
    let upstream = MockServer::start().await;
    Mock::given(method("POST")).respond_with(UsageWhenAsked).mount(&upstream).await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "s", "s-vllm", "vllm", &format!("{}/v1", upstream.uri()), json!({})).await;
    add(&app, "o", "s-ollama", "ollama", &format!("{}/v1", upstream.uri()), json!({})).await;

    let text = stream_request(&app).await.text().await.unwrap();
    assert!(text.contains("\"hi\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("usage"), "the client did not ask for the usage chunk: {text}");
    let o = chat(&app, json!({"model": "o", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(o.status(), 200);
    o.text().await.unwrap();

    app.gateway.flush_spend().await;
    let rows = app.gateway.store().recent_spend(5).await.unwrap();
    let vllm = rows.iter().find(|r| r.deployment_id.as_deref() == Some("s-vllm")).unwrap();
    assert_eq!((vllm.prompt_tokens, vllm.completion_tokens), (100, 50));
    assert!((vllm.spend - (100.0 * 0.000001 + 50.0 * 0.000002)).abs() < 1e-12, "{}", vllm.spend);
    let ollama = rows.iter().find(|r| r.deployment_id.as_deref() == Some("s-ollama")).unwrap();
    assert_eq!(ollama.spend, 0.0);
    assert_eq!(ollama.unpriced_reason.as_deref(), Some("upstream stream reported no usage"));
    app.stop().await;
});

on_both_backends!(environment_references_resolve_at_registry_build, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-from-environment"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(1)
        .mount(&upstream)
        .await;
    let mut settings = test_settings();
    settings.secret_refs = deltallm_core::settings::SecretRefs::new(|name| {
        (name == "UPSTREAM_KEY_FOR_TEST").then(|| "sk-from-environment".to_owned())
    });
    let app = TestApp::start(&url, settings).await;
    let base = format!("{}/v1", upstream.uri());
    add(
        &app,
        "ref",
        "ref-1",
        "vllm",
        &base,
        json!({"deltallm_params": {"api_key": "os.environ/UPSTREAM_KEY_FOR_TEST"}}),
    )
    .await;
    add(
        &app,
        "gone",
        "gone-1",
        "openai",
        &base,
        json!({"deltallm_params": {"api_key": "os.environ/NOT_SET_FOR_TEST"}}),
    )
    .await;

    assert_eq!(chat(&app, json!({"model": "ref", "messages": []})).await.status(), 200);
    // An unresolvable reference is an absent key, never the reference text sent upstream.
    let missing = chat(&app, json!({"model": "gone", "messages": []})).await;
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Provider API key is missing for selected model");
    // The stored value stays the reference: the secret itself is never written.
    let stored = app.gateway.store().get_deployment("ref-1").await.unwrap().unwrap();
    assert_eq!(stored.deltallm_params["api_key"], "os.environ/UPSTREAM_KEY_FOR_TEST");
    app.stop().await;
});

on_both_backends!(a_large_spend_batch_is_written_whole_and_exact, |url: String| async move {
    use deltallm_storage::{SpendGroupBy, SpendRecord};
    let app = TestApp::start(&url, test_settings()).await;
    let now = chrono::Utc::now();
    // 101 rows: 64 + 32 + 4 + 1 on PostgreSQL, 12 × 8 + 5 × 1 on SQLite, so
    // every statement size the writers use.
    let records: Vec<SpendRecord> = (0..101)
        .map(|i| SpendRecord {
            request_id: format!("req-{i}"),
            call_type: if i == 7 { "embedding" } else { "chat_completion" },
            model: if i % 2 == 0 { "even".into() } else { "odd".into() },
            deployment_id: Some(format!("d-{i}").into()),
            provider: "vllm".into(),
            spend: 0.5,
            billing_unit: "token",
            prompt_tokens: i,
            total_tokens: i,
            unpriced_reason: (i == 100).then_some("no price"),
            request_tags: "[\"t\"]".into(),
            metadata: "{}".into(),
            status: if i == 7 { "failure" } else { "success" },
            error_type: (i == 7).then_some("api_error"),
            http_status_code: 200,
            stream: i % 3 == 0,
            start_time: now,
            end_time: now,
            ..SpendRecord::default()
        })
        .collect();
    app.gateway.store().insert_spend(records).await.unwrap();
    let rows = app.gateway.store().recent_spend(200).await.unwrap();
    assert_eq!(rows.len(), 101);
    let last = &rows[0];
    assert_eq!(
        (last.request_id.as_str(), last.prompt_tokens, last.unpriced_reason.as_deref()),
        ("req-100", 100, Some("no price"))
    );
    assert_eq!(
        (rows[100].request_id.as_str(), rows[100].stream, rows[100].deployment_id.as_deref()),
        ("req-0", true, Some("d-0"))
    );
    // Fixed-vocabulary fields land as written, and timestamps read back exactly.
    let seventh = rows.iter().find(|r| r.request_id == "req-7").unwrap();
    assert_eq!(
        (seventh.call_type.as_str(), seventh.status.as_str(), seventh.error_type.as_deref()),
        ("embedding", "failure", Some("api_error"))
    );
    assert_eq!(
        (rows[3].call_type.as_str(), rows[3].status.as_str(), rows[3].error_type.as_deref()),
        ("chat_completion", "success", None)
    );
    assert_eq!(rows[50].start_time.timestamp_micros(), now.timestamp_micros());
    let by_model = app.gateway.store().spend_summary(SpendGroupBy::Model, None, None).await.unwrap();
    let even = by_model.iter().find(|r| r.key.as_deref() == Some("even")).unwrap();
    assert_eq!((even.requests, even.prompt_tokens), (51, (0..101).step_by(2).sum::<i64>()));
    assert!((even.spend - 25.5).abs() < 1e-9);
    app.stop().await;
});

on_both_backends!(spend_lands_shortly_after_a_request_without_a_flush, |url: String| async move {
    // Nothing asks the writer to flush: the batch's linger alone writes it.
    let app = TestApp::start(&url, test_settings()).await;
    for _ in 0..3 {
        assert_eq!(chat(&app, json!({"model": "nobody", "messages": []})).await.status(), 404);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut written = 0;
    while std::time::Instant::now() < deadline {
        written = app.gateway.store().recent_spend(10).await.unwrap().len();
        if written == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(written, 3, "three refused requests, three spend rows within the linger");
    app.stop().await;
});

on_both_backends!(a_steady_trickle_of_requests_does_not_hold_spend_back, |url: String| async move {
    // One request every 100 ms never leaves the writer idle for its 200 ms
    // linger; the linger still counts from the batch's first record.
    let app = TestApp::start(&url, test_settings()).await;
    for _ in 0..6 {
        assert_eq!(chat(&app, json!({"model": "nobody", "messages": []})).await.status(), 404);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let written = app.gateway.store().recent_spend(10).await.unwrap().len();
    assert!(written >= 1, "spend rows written while requests keep coming, got {written}");
    app.stop().await;
});

/// The gateway binary dispatches the JSON proxy routes without the router
/// (`GatewayService`); embedders mounting `deltallm_http::app` go through
/// it. Both must answer every request alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_dispatch_and_the_router_answer_alike() {
    let db = deltallm_e2e::TestDb::create(deltallm_e2e::Backend::Sqlite).await.expect("sqlite");
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&upstream)
        .await;
    let app = TestApp::start(&db.url, test_settings()).await;
    add(&app, "gpt", "gpt-a", "openai", &format!("{}/v1", upstream.uri()), json!({})).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_base = format!("http://{}", listener.local_addr().unwrap());
    let router = tokio::spawn(axum::serve(listener, deltallm_http::app(app.gateway.clone())).into_future());

    let chat = json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]});
    let cases: Vec<(reqwest::Method, &str, Option<Value>)> = vec![
        (reqwest::Method::POST, "/v1/chat/completions", Some(chat.clone())),
        (reqwest::Method::POST, "/chat/completions", Some(chat.clone())),
        (reqwest::Method::POST, "/v1/completions", Some(json!({"model": "gpt", "prompt": "x"}))),
        (reqwest::Method::POST, "/v1/embeddings", Some(json!({"model": "gpt", "input": "x"}))),
        (reqwest::Method::POST, "/v1/chat/completions", Some(json!({"model": "nope", "messages": []}))),
        (reqwest::Method::POST, "/v1/chat/completions", None),
        (reqwest::Method::GET, "/v1/chat/completions", None),
        (reqwest::Method::POST, "/v1/chat/completions/", Some(chat.clone())),
        (reqwest::Method::POST, "/v1/v1/chat/completions", Some(chat.clone())),
        (reqwest::Method::POST, "/v1", Some(chat.clone())),
    ];
    let client = reqwest::Client::new();
    for (m, path, body) in cases {
        let mut answers = Vec::new();
        for base in [app.base.as_str(), router_base.as_str()] {
            let mut req = client.request(m.clone(), format!("{base}{path}")).bearer_auth(MASTER_KEY);
            req = match &body {
                Some(b) => req.json(b),
                None => req.header("content-type", "application/json").body("{not json"),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let route: Vec<_> = ["x-deltallm-route-group", "x-deltallm-route-deployment", "content-type"]
                .iter()
                .map(|h| resp.headers().get(*h).map(|v| v.to_str().unwrap().to_owned()))
                .collect();
            let text = resp.text().await.unwrap();
            let text = match serde_json::from_str::<Value>(&text) {
                // Ids differ per request; the shape and the error must not.
                Ok(mut v) => {
                    v.as_object_mut().map(|o| o.remove("id"));
                    v.to_string()
                }
                Err(_) => text,
            };
            answers.push((status, route, text));
        }
        assert_eq!(answers[0], answers[1], "{m} {path}");
    }
    router.abort();
    app.stop().await;
    db.cleanup().await;
}

/// SQL that makes every spend insert fail, and the SQL that undoes it.
fn refuse_spend_inserts(url: &str) -> (&'static str, &'static str) {
    if url.starts_with("postgres") {
        (
            "CREATE FUNCTION refuse_spend() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_spend BEFORE INSERT ON spend_logs FOR EACH ROW EXECUTE FUNCTION refuse_spend()",
            "DROP TRIGGER refuse_spend ON spend_logs; DROP FUNCTION refuse_spend()",
        )
    } else {
        (
            "CREATE TRIGGER refuse_spend BEFORE INSERT ON spend_logs BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
            "DROP TRIGGER refuse_spend",
        )
    }
}

on_both_backends!(spend_the_database_refused_or_the_queue_dropped_is_reported, |url: String| async move {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&upstream)
        .await;
    // Room for one queued record, so that a writer held up by a lock drops the rest.
    let mut settings = test_settings();
    settings.spend_queue_capacity = 1;
    let app = TestApp::start(&url, settings).await;
    add(&app, "gpt", "gpt-a", "openai", &format!("{}/v1", upstream.uri()), json!({})).await;
    let call = || chat(&app, json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}));
    let summary = || app.get("/ui/api/spend/summary?group_by=model");
    let requests =
        |b: &Value| b["data"].as_array().unwrap().iter().map(|r| r["requests"].as_i64().unwrap()).sum::<i64>();

    let (s, b) = summary().await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["unrecorded"], json!({"queue_full": 0, "write_failed": 0}));

    // The database refuses every insert: the requests still succeed, and the
    // summary says how many records it is missing.
    let (refuse, allow) = refuse_spend_inserts(&url);
    app.gateway.store().connection().execute_unprepared(refuse).await.unwrap();
    for _ in 0..3 {
        assert_eq!(call().await.status(), 200);
        // One record at a time: this phase counts refusals, and a slow
        // writer must not turn them into queue drops on a busy machine.
        app.gateway.flush_spend().await;
    }
    let (_, b) = summary().await;
    assert_eq!(requests(&b), 0);
    assert_eq!(b["unrecorded"], json!({"queue_full": 0, "write_failed": 3}));
    app.gateway.store().connection().execute_unprepared(allow).await.unwrap();
    assert_eq!(call().await.status(), 200);
    let (_, b) = summary().await;
    assert_eq!(requests(&b), 1, "the writer goes on after a refused batch");
    assert_eq!(b["unrecorded"], json!({"queue_full": 0, "write_failed": 3}));

    // Another connection holds the table: the writer waits on its first
    // record, one more fits in the queue and the rest are dropped and counted.
    let txn = app.gateway.store().connection().begin().await.unwrap();
    let hold = if url.starts_with("postgres") {
        "LOCK TABLE spend_logs IN EXCLUSIVE MODE"
    } else {
        "DELETE FROM spend_logs WHERE request_id = 'none'"
    };
    txn.execute_unprepared(hold).await.unwrap();
    assert_eq!(call().await.status(), 200);
    // Well past the writer's 200 ms linger (a loaded CI machine included):
    // it is now stuck in its insert, inside SQLite's 5 s busy timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        assert_eq!(call().await.status(), 200, "a full spend queue never fails a request");
    }
    txn.commit().await.unwrap();
    let (_, b) = summary().await;
    assert_eq!(requests(&b), 3, "the held record and the queued one land");
    assert_eq!(b["unrecorded"], json!({"queue_full": 4, "write_failed": 3}));
    app.stop().await;
});
