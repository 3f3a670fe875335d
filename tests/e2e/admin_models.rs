//! Admin deployments API (ADM-2..4), `/v1/models`, persistence, health checks.

use deltallm_e2e::{MASTER_KEY, TestApp, on_both_backends, test_settings};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn vllm_payload(api_base: &str) -> Value {
    json!({
        "model_name": "llama-3-8b",
        "deployment_id": "vllm/llama-3-8b",
        "deltallm_params": {
            "provider": "vllm",
            "model": "meta-llama/Meta-Llama-3-8B-Instruct",
            "api_base": api_base,
            "api_key": "sk-vllm-canary-7f3a"
        },
        "model_info": {"mode": "chat", "access_groups": ["Beta", "support", "beta"]}
    })
}

on_both_backends!(create_list_models_restart, |url: String| async move {
    let upstream = MockServer::start().await;
    let app = TestApp::start(&url, test_settings()).await;

    let (status, created) = app.post("/ui/api/models", &vllm_payload(&format!("{}/v1", upstream.uri()))).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["deployment_id"], "vllm/llama-3-8b");
    assert_eq!(created["deltallm_params"]["api_key"], "***REDACTED***");
    assert_eq!(created["model_info"]["access_groups"], json!(["beta", "support"]));
    assert!(created.get("health").is_none(), "create responses carry no health");

    let (status, list) = app.get("/ui/api/models").await;
    assert_eq!(status, 200);
    let row = &list["data"][0];
    assert_eq!(row["provider"], "vllm");
    assert_eq!(row["mode"], "chat");
    assert_eq!(row["deployment_id"], "vllm/llama-3-8b");
    assert_eq!(row["healthy"], true);
    assert_eq!(row["credential_source"], "inline");
    assert_eq!(row["inline_credentials_present"], true);
    assert_eq!(list["pagination"], json!({"total": 1, "limit": 100, "offset": 0, "has_more": false}));

    let (status, models) = app.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "llama-3-8b");
    assert_eq!(models["data"][0]["owned_by"], "deltallm");

    // A restart on the same database serves the same deployment.
    app.stop().await;
    let app = TestApp::start(&url, test_settings()).await;
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "llama-3-8b");
    let (status, one) = app.get("/ui/api/models/vllm/llama-3-8b").await;
    assert_eq!(status, 200);
    assert_eq!(one["deltallm_params"]["model"], "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!(one["health"]["healthy"], true);
    // The secret survived the restart (decrypted for use, never shown).
    let registry = app.gateway.registry();
    let resolved = registry.deployments.get("vllm/llama-3-8b").expect("loaded");
    assert_eq!(resolved.record.deltallm_params["api_key"], "sk-vllm-canary-7f3a");
    app.stop().await;
});

on_both_backends!(health_check_probes_upstream_and_records_health, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-vllm-canary-7f3a"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .expect(1)
        .mount(&upstream)
        .await;
    let app = TestApp::start(&url, test_settings()).await;
    app.post("/ui/api/models", &vllm_payload(&format!("{}/v1", upstream.uri()))).await;

    let (status, ok) = app.post("/ui/api/models/vllm/llama-3-8b/health-check", &json!({})).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["healthy"], true);
    assert_eq!(ok["status_code"], 200);
    assert_eq!(ok["deployment_id"], "vllm/llama-3-8b");

    // The upstream starts failing: the probe says so and the list shows it.
    upstream.reset().await;
    Mock::given(method("GET")).and(path("/v1/models")).respond_with(ResponseTemplate::new(401)).mount(&upstream).await;
    let (_, bad) = app.post("/ui/api/models/vllm/llama-3-8b/health-check", &json!({})).await;
    assert_eq!(bad["healthy"], false);
    assert_eq!(bad["status_code"], 401);
    assert!(bad["message"].as_str().unwrap().contains("vllm health check returned 401"), "{bad}");
    let (_, list) = app.get("/ui/api/models").await;
    assert_eq!(list["data"][0]["healthy"], false);
    let (_, one) = app.get("/ui/api/models/vllm/llama-3-8b").await;
    assert_eq!(one["health"]["healthy"], false);
    assert!(one["health"]["last_error"].as_str().unwrap().contains("401"));

    let (status, missing) = app.post("/ui/api/models/nope/health-check", &json!({})).await;
    assert_eq!((status, missing["detail"].as_str()), (404, Some("Deployment not found")));
    app.stop().await;
});

on_both_backends!(list_filters_search_and_pagination, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let specs = [
        ("gpt-4o", "openai", "gpt-4o", "chat"),
        ("text-embed", "openai", "text-embedding-3-small", "embedding"),
        ("llama-groq", "groq", "llama-3.1-8b-instant", "chat"),
        ("claude", "anthropic", "claude-3-5-sonnet", "chat"),
    ];
    for (name, provider, model, mode) in specs {
        let (s, b) = app
            .post(
                "/ui/api/models",
                &json!({"model_name": name, "deltallm_params": {"provider": provider, "model": model, "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}, "model_info": {"mode": mode}}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        // Generated ids are <model_name>-<8 hex> (DEP-2).
        let id = b["deployment_id"].as_str().unwrap();
        let suffix = id.strip_prefix(&format!("{name}-")).unwrap();
        assert!(suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
    }
    let names = |v: &Value| {
        v["data"].as_array().unwrap().iter().map(|r| r["model_name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    let (_, all) = app.get("/ui/api/models").await;
    assert_eq!(names(&all), ["claude", "gpt-4o", "llama-groq", "text-embed"]);
    let (_, groq) = app.get("/ui/api/models?search=GROQ").await;
    assert_eq!(names(&groq), ["llama-groq"]);
    let (_, emb) = app.get("/ui/api/models?mode=embedding").await;
    assert_eq!(names(&emb), ["text-embed"]);
    let (_, openai) = app.get("/ui/api/models?provider=openai").await;
    assert_eq!(names(&openai), ["gpt-4o", "text-embed"]);
    let (_, page) = app.get("/ui/api/models?limit=2&offset=2").await;
    assert_eq!(names(&page), ["llama-groq", "text-embed"]);
    assert_eq!(page["pagination"], json!({"total": 4, "limit": 2, "offset": 2, "has_more": false}));
    let (_, page1) = app.get("/ui/api/models?limit=2").await;
    assert_eq!(page1["pagination"]["has_more"], true);
    let (s, e) = app.get("/ui/api/models?limit=501").await;
    assert_eq!((s, e["detail"].as_str()), (400, Some("limit must be between 1 and 500")));
    app.stop().await;
});

on_both_backends!(update_merges_and_delete_removes, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    app.post("/ui/api/models", &vllm_payload("http://127.0.0.1:9/v1")).await;

    // EDGE-1: an update without api_key keeps it.
    let (s, b) = app
        .put(
            "/ui/api/models/vllm/llama-3-8b",
            &json!({"deltallm_params": {"api_base": "http://127.0.0.1:10/v1", "timeout": 30}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let reg = app.gateway.registry();
    let d = &reg.deployments.get("vllm/llama-3-8b").unwrap().record;
    assert_eq!(d.deltallm_params["api_key"], "sk-vllm-canary-7f3a");
    assert_eq!(d.deltallm_params["api_base"], "http://127.0.0.1:10/v1");
    assert_eq!(d.deltallm_params["timeout"], 30);
    assert_eq!(d.model_info["access_groups"], json!(["beta", "support"]), "model_info kept when omitted");

    // null deletes a key; model_info replaces wholesale; rename allowed.
    let (s, b) = app
        .put("/ui/api/models/vllm/llama-3-8b", &json!({"model_name": "llama-3", "deltallm_params": {"timeout": null}, "model_info": {"mode": "embedding"}}))
        .await;
    assert_eq!(s, 200, "{b}");
    let reg = app.gateway.registry();
    let d = &reg.deployments.get("vllm/llama-3-8b").unwrap().record;
    assert!(d.deltallm_params.get("timeout").is_none());
    assert_eq!(d.model_info, *json!({"mode": "embedding"}).as_object().unwrap());
    assert_eq!(d.model_name, "llama-3");
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "llama-3");

    // EDGE-1: a provider change drops the old connection fields.
    let (s, b) = app
        .put("/ui/api/models/vllm/llama-3-8b", &json!({"deltallm_params": {"provider": "openai", "model": "text-embedding-3-small", "api_base": "https://api.openai.com/v1"}}))
        .await;
    assert_eq!(s, 200, "{b}");
    let reg = app.gateway.registry();
    let d = &reg.deployments.get("vllm/llama-3-8b").unwrap().record;
    assert!(d.deltallm_params.get("api_key").is_none(), "old key dropped on provider change");
    assert_eq!(b["inline_credentials_present"], false);

    let (s, b) = app.put("/ui/api/models/unknown", &json!({"model_name": "x"})).await;
    assert_eq!((s, b["detail"].as_str()), (404, Some("Deployment not found")));
    let (s, b) = app.delete("/ui/api/models/vllm/llama-3-8b").await;
    assert_eq!((s, b), (200, json!({"deleted": true})));
    let (s, _) = app.delete("/ui/api/models/vllm/llama-3-8b").await;
    assert_eq!(s, 404);
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"], json!([]));
    app.stop().await;
});

on_both_backends!(shared_model_name_warns_on_differing_access_groups, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let dep = |id: &str, groups: Value| json!({"model_name": "shared", "deployment_id": id, "deltallm_params": {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "k"}, "model_info": {"access_groups": groups}});
    let (s, a) = app.post("/ui/api/models", &dep("shared-a", json!(["team-a"]))).await;
    assert_eq!(s, 200);
    assert!(a.get("warnings").is_none());
    let (s, b) = app.post("/ui/api/models", &dep("shared-b", json!(["team-a"]))).await;
    assert_eq!(s, 200, "a second deployment under a taken name is accepted (DEP-3)");
    assert!(b.get("warnings").is_none());
    let (s, c) = app.post("/ui/api/models", &dep("shared-c", json!(["team-b"]))).await;
    assert_eq!(s, 200);
    let warning = c["warnings"][0].as_str().expect("warning");
    assert!(warning.contains("shared") && warning.contains("team-b") && warning.contains("team-a"), "{warning}");
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "one public name");
    assert_eq!(app.gateway.registry().entries.get("shared").unwrap().members.len(), 3);
    // The list view flags every deployment of the name until the lists agree.
    let (_, list) = app.get("/ui/api/models").await;
    let flagged =
        list["data"].as_array().unwrap().iter().filter(|e| e["warnings"][0].as_str() == Some(warning)).count();
    assert_eq!(flagged, 3, "{list}");
    let (s, _) = app.put("/ui/api/models/shared-c", &json!({"model_info": {"access_groups": ["team-a"]}})).await;
    assert_eq!(s, 200);
    let (_, list) = app.get("/ui/api/models").await;
    assert!(list["data"].as_array().unwrap().iter().all(|e| e.get("warnings").is_none()), "{list}");
    app.stop().await;
});

on_both_backends!(authentication_is_required, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let anon = app.client.get(app.url("/ui/api/models")).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(anon.json::<Value>().await.unwrap(), json!({"detail": "Authentication required"}));
    let wrong = app.client.get(app.url("/ui/api/models")).bearer_auth("sk-wrong").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let header_key = app.client.get(app.url("/ui/api/models")).header("X-Master-Key", MASTER_KEY).send().await.unwrap();
    assert_eq!(header_key.status(), 200);
    let v1 = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(v1.status(), 401);
    let body: Value = v1.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    for p in ["/health", "/health/liveliness", "/health/readiness"] {
        assert_eq!(app.client.get(app.url(p)).send().await.unwrap().status(), 200, "{p}");
    }
    let presets = app.get("/ui/api/provider-presets").await.1;
    let vllm = presets["data"].as_array().unwrap().iter().find(|p| p["provider"] == "vllm").unwrap();
    assert_eq!(vllm["api_base"], Value::Null);
    assert_eq!(
        vllm["supported_modes"],
        json!(["chat", "embedding", "image_generation", "audio_speech", "audio_transcription"])
    );
    app.stop().await;
});

on_both_backends!(no_master_key_configured_refuses_writes, |url: String| async move {
    let mut settings = test_settings();
    settings.master_key = None;
    let app = TestApp::start(&url, settings).await;
    let (s, b) = app.get("/ui/api/models").await;
    assert_eq!((s, b["detail"].as_str()), (503, Some("No master key is configured")));
    app.stop().await;
});

on_both_backends!(one_name_one_mode_and_no_route_group_key, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let chat = json!({"model_name": "shared", "deployment_id": "chat-1",
        "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://127.0.0.1:9/v1"}});
    assert_eq!(app.post("/ui/api/models", &chat).await.0, 200);

    // A second deployment of the name with another mode would receive chat requests.
    let emb = json!({"model_name": "shared", "deployment_id": "emb-1",
        "deltallm_params": {"provider": "vllm", "model": "e5", "api_base": "http://127.0.0.1:9/v1"},
        "model_info": {"mode": "embedding"}});
    let (s, b) = app.post("/ui/api/models", &emb).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        b["detail"],
        "Deployments of model 'shared' must share one mode: 'chat-1' is chat, this one is embedding"
    );
    assert_eq!(app.get("/ui/api/models/emb-1").await.0, 404, "nothing stored");

    // Model names and route-group keys share one namespace (ADM-6), on create and on rename.
    assert_eq!(app.post("/ui/api/route-groups", &json!({"group_key": "support"})).await.0, 200);
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "support", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://h/v1"}}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["detail"], "Model name 'support' is already a route group key; callable keys must be unique");
    let (s, _) = app.put("/ui/api/models/chat-1", &json!({"model_name": "support"})).await;
    assert_eq!(s, 409);
    let (_, kept) = app.get("/ui/api/models/chat-1").await;
    assert_eq!(kept["model_name"], "shared", "a refused rename changes nothing");
    app.stop().await;
});

on_both_backends!(a_failed_health_check_cools_down_and_then_routes_again, |url: String| async move {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).and(path("/v1/models")).respond_with(ResponseTemplate::new(502)).mount(&upstream).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})))
        .mount(&upstream)
        .await;
    let mut settings = test_settings();
    settings.router.cooldown_time = 1.0;
    let app = TestApp::start(&url, settings).await;
    assert_eq!(app.post("/ui/api/models", &vllm_payload(&format!("{}/v1", upstream.uri()))).await.0, 200);

    let (_, probe) = app.post("/ui/api/models/vllm/llama-3-8b/health-check", &json!({})).await;
    assert_eq!(probe["healthy"], false, "{probe}");
    assert_eq!(probe["health"]["in_cooldown"], true, "{probe}");
    let call = || async {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .json(&json!({"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    };
    let refused = call().await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "no_healthy_deployments");

    // Without background checks nothing probes again: the cooldown's end alone restores routing.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(call().await.status(), 200);
    let (_, got) = app.get("/ui/api/models/vllm/llama-3-8b").await;
    assert_eq!(got["healthy"], true, "a served request marks it healthy again: {got}");
    app.stop().await;
});

on_both_backends!(replicas_on_one_database_see_each_others_writes, |url: String| async move {
    let mut settings = test_settings();
    settings.registry_poll_interval = Some(std::time::Duration::from_millis(100));
    let a = TestApp::start(&url, settings.clone()).await;
    let b = TestApp::start(&url, settings).await;
    assert_eq!(a.post("/ui/api/models", &vllm_payload("http://127.0.0.1:9/v1")).await.0, 200);

    assert!(lists_within(&b, 1, 2500).await, "replica b picks up a deployment created on replica a");
    assert_eq!(b.delete("/ui/api/models/vllm/llama-3-8b").await.0, 200);
    assert!(lists_within(&a, 0, 2500).await, "and a sees b's delete");
    a.stop().await;
    b.stop().await;
});

on_both_backends!(a_create_here_and_a_delete_elsewhere_between_two_polls_is_not_missed, |url: String| async move {
    // The database returns to the state this replica's poll last saw, but
    // this replica's registry (rebuilt after its own create) has moved on.
    let mut polling = test_settings();
    polling.registry_poll_interval = Some(std::time::Duration::from_millis(300));
    let a = TestApp::start(&url, polling).await;
    let mut quiet = test_settings();
    quiet.registry_poll_interval = None;
    let b = TestApp::start(&url, quiet).await;
    assert_eq!(a.post("/ui/api/models", &vllm_payload("http://127.0.0.1:9/v1")).await.0, 200);
    assert_eq!(b.delete("/ui/api/models/vllm/llama-3-8b").await.0, 200);
    assert!(lists_within(&a, 0, 2500).await, "replica a drops the deployment deleted on replica b");
    a.stop().await;
    b.stop().await;
});

/// Does `/v1/models` on `app` list `n` models within `ms` milliseconds?
async fn lists_within(app: &TestApp, n: usize, ms: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        if app.get("/v1/models").await.1["data"].as_array().unwrap().len() == n {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
