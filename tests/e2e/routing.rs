//! Routing, failover and health over real HTTP against loopback upstreams:
//! route groups and versioned policies, fault injection (500s, hung
//! upstreams, 429 with Retry-After, 400s), cooldown and recovery,
//! classified fallbacks, tags, background health checks and the health
//! endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deltallm_core::GatewaySettings;
use deltallm_e2e::{Backend, MASTER_KEY, TestApp, TestDb, on_both_backends, test_settings};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

async fn ok_upstream() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_json(completion())).mount(&s).await;
    s
}

async fn failing_upstream(status: u16, body: Value) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(status).set_body_json(body)).mount(&s).await;
    s
}

/// Register a chat deployment; `model_info` extras merge in.
async fn add(app: &TestApp, name: &str, id: &str, api_base: &str, model_info: Value) {
    let mut info = json!({"mode": "chat"});
    if let Value::Object(extra) = model_info {
        info.as_object_mut().unwrap().extend(extra);
    }
    let body = json!({
        "model_name": name,
        "deployment_id": id,
        "deltallm_params": {"provider": "vllm", "model": format!("up-{id}"), "api_base": api_base, "api_key": "sk-up"},
        "model_info": info,
    });
    let (s, b) = app.post("/ui/api/models", &body).await;
    assert_eq!(s, 200, "{b}");
}

async fn chat(app: &TestApp, model: &str) -> reqwest::Response {
    chat_body(app, json!({"model": model, "messages": [{"role": "user", "content": "x"}]})).await
}

async fn chat_body(app: &TestApp, body: Value) -> reqwest::Response {
    app.client.post(app.url("/v1/chat/completions")).bearer_auth(MASTER_KEY).json(&body).send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn routing_settings(f: impl FnOnce(&mut GatewaySettings)) -> GatewaySettings {
    let mut s = test_settings();
    s.router.retry_after = 0.01;
    f(&mut s);
    s
}

/// A SQLite-backed app (fault-injection tests do not depend on the backend).
async fn sqlite_app(settings: GatewaySettings) -> (TestApp, TestDb) {
    let db = TestDb::create(Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::start(&db.url, settings).await;
    (app, db)
}

async fn hits(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

/// An upstream that accepts connections and reads requests but never answers.
async fn hung_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (base, accepted)
}

on_both_backends!(route_groups_and_policies_round_trip, |url: String| async move {
    let a = ok_upstream().await;
    let b = ok_upstream().await;
    let app = TestApp::start(&url, test_settings()).await;
    add(&app, "gpt", "gpt-a", &format!("{}/v1", a.uri()), json!({})).await;
    add(&app, "gpt", "gpt-b", &format!("{}/v1", b.uri()), json!({})).await;
    add(&app, "emb", "emb-1", &format!("{}/v1", a.uri()), json!({"mode": "embedding"})).await;

    // ADM-6 create: collisions and unknown members are refused.
    let (s, body) = app.post("/ui/api/route-groups", &json!({"group_key": "gpt"})).await;
    assert_eq!(s, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("model name"));
    let (s, body) = app
        .post("/ui/api/route-groups", &json!({"group_key": "support", "members": [{"deployment_id": "ghost"}]}))
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, _) = app.post("/ui/api/route-groups", &json!({"group_key": "bad/key"})).await;
    assert_eq!(s, 400);
    let (s, created) = app
        .post(
            "/ui/api/route-groups",
            &json!({"group_key": "support", "name": "Support", "routing_strategy": "weighted",
                    "metadata": {"access_groups": ["Beta", "beta"]},
                    "members": [{"deployment_id": "gpt-a"}, {"deployment_id": "gpt-b", "weight": 3}]}),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["live"], true);
    assert_eq!(created["effective_strategy"], "weighted");
    assert_eq!(created["metadata"]["access_groups"], json!(["beta"]));
    assert_eq!(created["members"].as_array().unwrap().len(), 2);
    assert_eq!(created["members"][1]["weight"], 3);
    assert_eq!(created["members"][0]["model_name"], "gpt");
    let (s, _) = app.post("/ui/api/route-groups", &json!({"group_key": "support"})).await;
    assert_eq!(s, 409, "duplicate key");

    // Route groups are callable and listed.
    let (_, models) = app.get("/v1/models").await;
    let ids: Vec<_> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["emb", "gpt", "support"]);
    let resp = chat(&app, "support").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-deltallm-route-group").as_deref(), Some("support"));
    assert_eq!(header(&resp, "x-deltallm-route-strategy").as_deref(), Some("weighted"));
    assert_eq!(header(&resp, "x-deltallm-route-policy-version"), None, "no policy published yet");

    // Member weights steer the weighted strategy: gpt-b (3) vs gpt-a (1).
    let mut b_count = 0;
    for _ in 0..200 {
        let resp = chat(&app, "support").await;
        assert_eq!(resp.status(), 200);
        if header(&resp, "x-deltallm-route-deployment").as_deref() == Some("gpt-b") {
            b_count += 1;
        }
    }
    assert!((120..=180).contains(&b_count), "gpt-b served {b_count}/200, expected about 150");

    // ADM-7: validate, draft, publish, rollback.
    let (s, body) = app.post("/ui/api/route-groups/support/policy/validate", &json!({"mode": "conditional"})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = app
        .post("/ui/api/route-groups/support/policy/validate", &json!({"members": [{"deployment_id": "emb-1"}]}))
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("not a member"));
    let v1 = json!({"mode": "fallback", "members": [{"deployment_id": "gpt-b"}, {"deployment_id": "gpt-a"}]});
    let (s, check) = app.post("/ui/api/route-groups/support/policy/validate", &json!({"policy": v1})).await;
    assert_eq!(s, 200, "{check}");
    assert_eq!(check["effective_strategy"], "priority-based-routing");
    assert_eq!(check["pool"][0], json!({"deployment_id": "gpt-b", "weight": 3, "priority": 0}));
    let (s, _) = app.post("/ui/api/route-groups/support/policy/publish", &json!({})).await;
    assert_eq!(s, 404, "no draft yet");
    let (s, draft) = app.post("/ui/api/route-groups/support/policy/draft", &json!({"policy": v1})).await;
    assert_eq!(s, 200, "{draft}");
    assert_eq!((draft["version"].as_u64(), draft["status"].as_str()), (Some(1), Some("draft")));
    let (s, _) = app.get("/ui/api/route-groups/support/policy").await;
    assert_eq!(s, 404, "a draft is not in force");
    let (s, published) = app.post("/ui/api/route-groups/support/policy/publish", &Value::Null).await;
    assert_eq!(s, 200, "{published}");
    assert_eq!((published["version"].as_u64(), published["status"].as_str()), (Some(1), Some("published")));
    for _ in 0..5 {
        let resp = chat(&app, "support").await;
        assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("gpt-b"), "fallback: first listed");
        assert_eq!(header(&resp, "x-deltallm-route-policy-version").as_deref(), Some("1"));
        assert_eq!(header(&resp, "x-deltallm-route-strategy").as_deref(), Some("priority-based-routing"));
    }
    // v2 via PUT (validate + publish): gpt-a first, a per-attempt deadline.
    let v2 = json!({"mode": "fallback", "members": [{"deployment_id": "gpt-a"}], "timeouts": {"global_ms": 5000}});
    let (s, body) = app.put("/ui/api/route-groups/support/policy", &v2).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["version"], 2);
    let resp = chat(&app, "support").await;
    assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("gpt-a"));
    assert_eq!(header(&resp, "x-deltallm-route-policy-version").as_deref(), Some("2"));
    // Rollback republishes v1's document as v3.
    let (s, body) = app.post("/ui/api/route-groups/support/policy/rollback", &json!({"version": 1})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!((body["version"].as_u64(), &body["policy"]), (Some(3), &published["policy"]));
    let resp = chat(&app, "support").await;
    assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("gpt-b"));
    assert_eq!(header(&resp, "x-deltallm-route-policy-version").as_deref(), Some("3"));
    let (s, body) = app.post("/ui/api/route-groups/support/policy/rollback", &json!({"version": 9})).await;
    assert_eq!(s, 404, "{body}");
    let (_, list) = app.get("/ui/api/route-groups/support/policies").await;
    let statuses: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["version"].as_u64().unwrap(), p["status"].clone()))
        .collect();
    assert_eq!(statuses, [(3, json!("published")), (2, json!("archived")), (1, json!("archived"))]);
    let (s, current) = app.get("/ui/api/route-groups/support/policy").await;
    assert_eq!((s, current["version"].as_u64()), (200, Some(3)));
    let (s, sim) = app.post("/ui/api/route-groups/support/policy/simulate", &Value::Null).await;
    assert_eq!(s, 200, "{sim}");
    assert_eq!(sim["available_count"], 2);

    // Members: upsert keeps position, delete, and a group without members is not live.
    let (s, m) =
        app.post("/ui/api/route-groups/support/members", &json!({"deployment_id": "gpt-a", "priority": 4})).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!((m["priority"].as_u64(), m["healthy"].as_bool()), (Some(4), Some(true)));
    let (s, _) = app.post("/ui/api/route-groups/support/members", &json!({"deployment_id": "ghost"})).await;
    assert_eq!(s, 400);
    // A member of another mode would never be routed to; it is refused, not skipped.
    let (s, b) = app.post("/ui/api/route-groups/support/members", &json!({"deployment_id": "emb-1"})).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["detail"], "Deployment 'emb-1' serves embedding and cannot join route group 'support' (mode chat)");
    let (_, members) = app.get("/ui/api/route-groups/support/members").await;
    let order: Vec<_> = members["data"].as_array().unwrap().iter().map(|m| m["deployment_id"].clone()).collect();
    assert_eq!(order, [json!("gpt-a"), json!("gpt-b")]);
    let (s, _) = app.put("/ui/api/route-groups/support", &json!({"enabled": false})).await;
    assert_eq!(s, 200);
    assert_eq!(chat(&app, "support").await.status(), 404, "a disabled group is not callable");
    let (s, g) = app.put("/ui/api/route-groups/support", &json!({"enabled": true, "name": "Help"})).await;
    assert_eq!((s, g["name"].as_str(), g["live"].as_bool()), (200, Some("Help"), Some(true)));
    // Deleting a deployment removes its memberships (FK cascade).
    let (s, _) = app.delete("/ui/api/models/gpt-b").await;
    assert_eq!(s, 200);
    let (_, g) = app.get("/ui/api/route-groups/support").await;
    assert_eq!(g["member_count"], 1, "{g}");
    let (s, _) = app.delete("/ui/api/route-groups/support/members/gpt-a").await;
    assert_eq!(s, 200);
    let (_, g) = app.get("/ui/api/route-groups/support").await;
    assert_eq!(g["live"], false);
    let (s, _) = app.delete("/ui/api/route-groups/support").await;
    assert_eq!(s, 200);
    let (s, _) = app.get("/ui/api/route-groups/support").await;
    assert_eq!(s, 404);
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let anon = app.client.get(app.url("/ui/api/route-groups")).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    app.stop().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_failing_costs_no_client_errors() {
    let good1 = ok_upstream().await;
    let good2 = ok_upstream().await;
    let bad = failing_upstream(500, json!({"error": {"message": "boom"}})).await;
    let settings = routing_settings(|s| {
        s.router.num_retries = 2;
        s.router.cooldown_time = 1.0;
    });
    let (app, db) = sqlite_app(settings).await;
    add(&app, "grp", "g-1", &format!("{}/v1", good1.uri()), json!({})).await;
    add(&app, "grp", "g-bad", &format!("{}/v1", bad.uri()), json!({})).await;
    add(&app, "grp", "g-2", &format!("{}/v1", good2.uri()), json!({})).await;

    let run = |n: usize| {
        let app = &app;
        async move {
            let results: Vec<u16> = futures_util::stream::iter(0..n)
                .map(|_| async move { chat(app, "grp").await.status().as_u16() })
                .buffer_unordered(8)
                .collect()
                .await;
            results.into_iter().filter(|s| *s != 200).count()
        }
    };
    let errors_warmup = run(50).await;
    let bad_before = hits(&bad).await;
    assert!((3..=12).contains(&bad_before), "the bad deployment cools down after 3 failures: {bad_before}");
    let started = Instant::now();
    let errors_main = run(950).await;
    let elapsed = started.elapsed();
    let bad_after = hits(&bad).await - bad_before;
    assert_eq!(errors_warmup + errors_main, 0, "no client errors over 1,000 requests");
    // After the first cooldown the bad one gets a few requests per expiry (cooldown 1 s).
    let share = bad_after as f64 / 950.0;
    assert!(share < 0.05, "bad deployment got {bad_after}/950 after cooldown ({share:.3}) in {elapsed:?}");
    eprintln!(
        "fault injection: 1,000 requests, 0 errors, bad got {bad_before} before and {bad_after} after cooldown in {elapsed:?}"
    );
    // Once the cooldown has run out it is selectable again (and cools straight back down).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before_retry = hits(&bad).await;
    assert_eq!(run(60).await, 0);
    assert!(hits(&bad).await > before_retry, "an expired cooldown makes the deployment selectable again");
    let (s, health) = app.get("/health/deployments?model=grp").await;
    assert_eq!(s, 200);
    assert_eq!(health["total"], 3);
    let (_, events) = app.get("/health/fallback-events?limit=5").await;
    let first = &events["data"][0];
    assert_eq!((first["from_deployment"].as_str(), first["reason"].as_str()), (Some("g-bad"), Some("failover")));
    assert_eq!(first["status_code"], 500);
    assert!(events["data"].as_array().unwrap().len() <= 5);
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_times_out_and_falls_back_within_the_deadline() {
    let (hung_base, accepted) = hung_upstream().await;
    let good = ok_upstream().await;
    let (app, db) = sqlite_app(routing_settings(|_| {})).await;
    add(&app, "hang", "hang-1", &hung_base, json!({})).await;
    add(&app, "ok", "ok-1", &format!("{}/v1", good.uri()), json!({})).await;
    let (s, b) = app
        .post(
            "/ui/api/route-groups",
            &json!({"group_key": "hg", "members": [{"deployment_id": "hang-1"}, {"deployment_id": "ok-1"}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Fallback mode: listed order is priority; a 300 ms per-attempt deadline beats the 600 s router timeout.
    let policy = json!({"mode": "fallback", "members": [{"deployment_id": "hang-1"}, {"deployment_id": "ok-1"}],
                        "timeouts": {"global_ms": 300}, "retry": {"max_attempts": 0}});
    let (s, b) = app.put("/ui/api/route-groups/hg/policy", &policy).await;
    assert_eq!(s, 200, "{b}");
    let started = Instant::now();
    let resp = chat(&app, "hg").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("ok-1"));
    assert_eq!(header(&resp, "x-deltallm-route-fallback-used").as_deref(), Some("true"));
    assert!(elapsed >= Duration::from_millis(300), "the attempt deadline was waited out: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "fallback happened within the deadline: {elapsed:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let (_, events) = app.get("/health/fallback-events").await;
    let e = &events["data"][0];
    assert_eq!((e["from_deployment"].as_str(), e["to_deployment"].as_str()), (Some("hang-1"), Some("ok-1")));
    assert_eq!(e["error_class"], "timeout");
    let (_, one) = app.get("/ui/api/models/hang-1").await;
    assert_eq!(one["health"]["consecutive_failures"], 1);
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_honoured_before_the_retry() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": {"message": "slow"}})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .with_priority(2)
        .mount(&upstream)
        .await;
    let (app, db) = sqlite_app(routing_settings(|s| s.router.num_retries = 1)).await;
    add(&app, "rl", "rl-1", &format!("{}/v1", upstream.uri()), json!({})).await;
    let started = Instant::now();
    let resp = chat(&app, "rl").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits(&upstream).await, 2);
    assert!(elapsed >= Duration::from_millis(950), "waited for Retry-After: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(header(&resp, "x-deltallm-route-fallback-used").as_deref(), Some("false"));
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_returned_at_once_without_retry_failover_or_cooldown() {
    let bad_request = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad temperature"}})))
        .expect(1)
        .mount(&bad_request)
        .await;
    let other = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(0)
        .mount(&other)
        .await;
    let (app, db) = sqlite_app(routing_settings(|s| {
        s.router.num_retries = 3;
        s.router.routing_strategy = "priority-based-routing".into();
    }))
    .await;
    add(&app, "m", "m-first", &format!("{}/v1", bad_request.uri()), json!({"priority": 0})).await;
    add(&app, "m", "m-second", &format!("{}/v1", other.uri()), json!({"priority": 1})).await;
    let resp = chat(&app, "m").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("m-first"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "bad temperature");
    let (_, one) = app.get("/ui/api/models/m-first").await;
    assert_eq!((one["health"]["consecutive_failures"].as_u64(), one["healthy"].as_bool()), (Some(0), Some(true)));
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_deployment_cools_down_and_comes_back() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .with_priority(2)
        .mount(&upstream)
        .await;
    let (app, db) = sqlite_app(routing_settings(|s| s.router.cooldown_time = 0.5)).await;
    add(&app, "solo", "solo-1", &format!("{}/v1", upstream.uri()), json!({})).await;
    for _ in 0..3 {
        assert_eq!(chat(&app, "solo").await.status(), 503);
    }
    let resp = chat(&app, "solo").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_healthy_deployments", "{body}");
    assert_eq!(hits(&upstream).await, 3, "a cooled-down deployment is not called");
    let (s, health) = app.get("/health/deployments").await;
    assert_eq!((s, health["status"].as_str()), (503, Some("unhealthy")));
    assert_eq!(health["deployments"][0]["in_cooldown"], true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = chat(&app, "solo").await;
    assert_eq!(resp.status(), 200, "cooldown expiry makes it selectable again");
    let (s, health) = app.get("/health/deployments?model=solo").await;
    assert_eq!((s, health["status"].as_str()), (200, Some("healthy")));
    let (s, _) = app.get("/health/deployments?model=ghost").await;
    assert_eq!(s, 404);
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_fallbacks_and_classified_fallbacks() {
    let down = failing_upstream(503, json!({"error": {"message": "down"}})).await;
    let too_long = failing_upstream(
        400,
        json!({"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}),
    )
    .await;
    let filtered =
        failing_upstream(400, json!({"error": {"message": "blocked by the safety system", "code": "content_filter"}}))
            .await;
    let good = ok_upstream().await;
    let (app, db) = sqlite_app(routing_settings(|s| {
        s.fallbacks.insert("primary".into(), vec!["backup".into()]);
        s.context_window_fallbacks.insert("short".into(), vec!["long".into()]);
        s.content_policy_fallbacks.insert("strict".into(), vec!["lenient".into()]);
    }))
    .await;
    add(&app, "primary", "p-1", &format!("{}/v1", down.uri()), json!({})).await;
    add(&app, "backup", "b-1", &format!("{}/v1", good.uri()), json!({})).await;
    add(&app, "short", "s-1", &format!("{}/v1", too_long.uri()), json!({})).await;
    add(&app, "long", "l-1", &format!("{}/v1", good.uri()), json!({})).await;
    add(&app, "strict", "st-1", &format!("{}/v1", filtered.uri()), json!({})).await;
    add(&app, "lenient", "le-1", &format!("{}/v1", good.uri()), json!({})).await;
    add(&app, "nofallback", "n-1", &format!("{}/v1", too_long.uri()), json!({})).await;

    for (model, served, reason) in [
        ("primary", "b-1", "failover"),
        ("short", "l-1", "context_window_fallback"),
        ("strict", "le-1", "content_policy_fallback"),
    ] {
        let resp = chat(&app, model).await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(header(&resp, "x-deltallm-route-group").as_deref(), Some(model));
        assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some(served));
        assert_eq!(header(&resp, "x-deltallm-route-fallback-used").as_deref(), Some("true"));
        let (_, events) = app.get("/health/fallback-events?limit=1").await;
        assert_eq!(events["data"][0]["reason"], reason, "{events}");
    }
    // Without a configured fallback the classified error is the client's, at once.
    let resp = chat(&app, "nofallback").await;
    assert_eq!(resp.status(), 400);
    let (_, one) = app.get("/ui/api/models/s-1").await;
    assert_eq!(one["health"]["consecutive_failures"], 0, "context-window errors never count against health");
    let (s, _) = app.get("/health/fallback-events?limit=abc").await;
    assert_eq!(s, 400);
    let (s, all) = app.get("/health/fallback-events?limit=1000").await;
    assert_eq!(s, 200);
    assert_eq!(all["total_recorded"], 3);
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_fails_over_before_the_first_chunk() {
    let broken = failing_upstream(502, json!({"error": {"message": "bad gateway"}})).await;
    let streaming = MockServer::start().await;
    let sse = "data: {\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).insert_header("content-type", "text/event-stream").set_body_string(sse),
        )
        .mount(&streaming)
        .await;
    let (app, db) = sqlite_app(routing_settings(|s| s.router.routing_strategy = "priority-based-routing".into())).await;
    add(&app, "s", "s-broken", &format!("{}/v1", broken.uri()), json!({"priority": 0})).await;
    add(&app, "s", "s-ok", &format!("{}/v1", streaming.uri()), json!({"priority": 1})).await;
    let resp = chat_body(&app, json!({"model": "s", "stream": true, "messages": []})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("s-ok"));
    assert_eq!(header(&resp, "x-deltallm-route-fallback-used").as_deref(), Some("true"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"hi\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_must_all_match_and_untagged_deployments_are_excluded() {
    let eu = ok_upstream().await;
    let eu_gpu = ok_upstream().await;
    let plain = ok_upstream().await;
    let (app, db) = sqlite_app(routing_settings(|_| {})).await;
    add(&app, "t", "t-eu", &format!("{}/v1", eu.uri()), json!({"tags": ["eu"]})).await;
    add(&app, "t", "t-eu-gpu", &format!("{}/v1", eu_gpu.uri()), json!({"tags": ["eu", "gpu"]})).await;
    add(&app, "t", "t-plain", &format!("{}/v1", plain.uri()), json!({})).await;
    let tagged = |tags: Value| json!({"model": "t", "messages": [], "metadata": {"tags": tags}});
    for _ in 0..20 {
        let resp = chat_body(&app, tagged(json!(["eu", "gpu"]))).await;
        assert_eq!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("t-eu-gpu"));
        let resp = chat_body(&app, tagged(json!(["eu"]))).await;
        assert_ne!(header(&resp, "x-deltallm-route-deployment").as_deref(), Some("t-plain"));
    }
    let resp = chat_body(&app, tagged(json!(["us"]))).await;
    assert_eq!(resp.status(), 503, "tags never widen the pool");
    assert_eq!(hits(&plain).await, 0, "the untagged deployment is excluded from tagged requests");
    for _ in 0..30 {
        assert_eq!(chat_body(&app, tagged(json!([]))).await.status(), 200, "no tags, no filter");
    }
    assert!(hits(&plain).await > 0);
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_health_checks_probe_models_and_never_bill() {
    let healthy = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&healthy)
        .await;
    let sick = MockServer::start().await;
    Mock::given(method("GET")).and(path("/v1/models")).respond_with(ResponseTemplate::new(503)).mount(&sick).await;
    for s in [&healthy, &sick] {
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(s).await;
    }
    let (app, db) = sqlite_app(routing_settings(|s| {
        s.background_health_checks = true;
        s.health_check_interval = Duration::from_millis(200);
    }))
    .await;
    add(&app, "h", "h-ok", &format!("{}/v1", healthy.uri()), json!({})).await;
    add(&app, "h", "h-sick", &format!("{}/v1", sick.uri()), json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let (s, health) = app.get("/health/deployments?model=h").await;
        if health["status"] == "degraded" || Instant::now() > deadline {
            assert_eq!(s, 200);
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["healthy_count"], 1);
    let sick_row = health["deployments"].as_array().unwrap().iter().find(|d| d["deployment_id"] == "h-sick").unwrap();
    assert_eq!(sick_row["healthy"], false);
    assert!(sick_row["last_error"].as_str().unwrap().contains("503"), "{sick_row}");
    // The admin list shows the same live health.
    let (_, list) = app.get("/ui/api/models?search=h-sick").await;
    assert_eq!(list["data"][0]["healthy"], false);
    assert!(hits(&healthy).await >= 1 && hits(&sick).await >= 1, "both were probed");
    app.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_do_not_block_in_flight_requests_and_keep_live_state() {
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()).set_delay(Duration::from_millis(800)))
        .mount(&slow)
        .await;
    let down = failing_upstream(503, json!({})).await;
    let (app, db) = sqlite_app(routing_settings(|_| {})).await;
    add(&app, "slow", "slow-1", &format!("{}/v1", slow.uri()), json!({})).await;
    add(&app, "down", "down-1", &format!("{}/v1", down.uri()), json!({})).await;
    assert_eq!(chat(&app, "down").await.status(), 503);
    let in_flight = {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = client
                .post(url)
                .bearer_auth(MASTER_KEY)
                .json(&json!({"model": "slow", "messages": []}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Ten registry rebuilds (admin writes) while the request is in flight; each finishes promptly.
    for i in 0..10 {
        let t = Instant::now();
        add(&app, "extra", &format!("extra-{i}"), &format!("{}/v1", slow.uri()), json!({})).await;
        assert!(t.elapsed() < Duration::from_millis(700), "write {i} took {:?}", t.elapsed());
    }
    let (status, elapsed) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let (_, one) = app.get("/ui/api/models/down-1").await;
    assert_eq!(one["health"]["consecutive_failures"], 1, "live state survives rebuilds");
    app.stop().await;
    db.cleanup().await;
}

on_both_backends!(config_route_groups_serve_until_the_database_has_its_own, |url: String| async move {
    let a = ok_upstream().await;
    let mut settings = test_settings();
    settings.router.route_groups = vec![json!({"group_key": "support", "routing_strategy": "weighted",
                                                "members": [{"deployment_id": "gpt-a"}]})];
    let app = TestApp::start(&url, settings.clone()).await;
    add(&app, "gpt", "gpt-a", &format!("{}/v1", a.uri()), json!({})).await;
    let (_, models) = app.get("/v1/models").await;
    let ids: Vec<_> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt", "support"]);
    let resp = chat(&app, "support").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-deltallm-route-strategy").as_deref(), Some("weighted"));

    // Once the database holds route groups, they alone are served.
    assert_eq!(
        app.post("/ui/api/route-groups", &json!({"group_key": "ops", "members": [{"deployment_id": "gpt-a"}]})).await.0,
        200
    );
    let (_, models) = app.get("/v1/models").await;
    let ids: Vec<_> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt", "ops"]);
    app.stop().await;

    // An invalid config group stops start-up and says where.
    settings.router.route_groups = vec![json!({"group_key": "x", "mode": "telepathy"})];
    let store = deltallm_bootstrap::connect_store(&url, deltallm_e2e::test_key_ring()).await.unwrap();
    let err = deltallm_core::Gateway::start(store, settings).await.err().expect("start must fail").to_string();
    assert!(err.contains("router_settings.route_groups[0]"), "{err}");
});
