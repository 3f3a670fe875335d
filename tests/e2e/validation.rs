//! Every invalid payload of the VAL and EDGE lists gets its specific error over
//! HTTP, and nothing stored changes.

use deltallm_e2e::{TestApp, on_both_backends, test_settings};
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "model_name": "m",
        "deltallm_params": {"provider": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-original"},
        "model_info": {"mode": "chat"}
    })
}

/// Apply `edit` to a copy of the base payload.
fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = base();
    edit(&mut v);
    v
}

fn invalid_creates() -> Vec<(&'static str, Value, u16, &'static str)> {
    vec![
        ("VAL-3 model_name", with(|v| v["model_name"] = json!("  ")), 400, "model_name is required"),
        (
            "VAL-3 provider",
            with(|v| v["deltallm_params"].as_object_mut().unwrap().remove("provider").map(drop).unwrap_or(())),
            400,
            "provider is required",
        ),
        ("VAL-3 model", with(|v| v["deltallm_params"]["model"] = json!("")), 400, "deltallm_params.model is required"),
        (
            "VAL-3 api_base",
            with(|v| v["deltallm_params"]["api_base"] = json!(" ")),
            400,
            "deltallm_params.api_base is required",
        ),
        ("VAL-3 params object", with(|v| v["deltallm_params"] = json!("x")), 400, "deltallm_params must be an object"),
        ("VAL-3 model_info object", with(|v| v["model_info"] = json!([1])), 400, "model_info must be an object"),
        (
            "VAL-2/EDGE-5 anthropic embedding",
            with(|v| {
                v["deltallm_params"]["provider"] = json!("anthropic");
                v["model_info"]["mode"] = json!("embedding");
            }),
            400,
            "Provider 'anthropic' does not support mode 'embedding'",
        ),
        (
            "VAL-2 rerank on openai",
            with(|v| v["model_info"]["mode"] = json!("rerank")),
            400,
            "Provider 'openai' does not support mode 'rerank'",
        ),
        (
            "VAL-5/EDGE-4 azure custom auth",
            with(|v| {
                v["deltallm_params"]["provider"] = json!("azure");
                v["deltallm_params"]["auth_header_name"] = json!("X-Key");
            }),
            400,
            "Custom auth headers are not supported for provider 'azure'",
        ),
        (
            "VAL-5 anthropic custom format",
            with(|v| {
                v["deltallm_params"]["provider"] = json!("anthropic");
                v["deltallm_params"]["auth_header_format"] = json!("{api_key}");
            }),
            400,
            "Custom auth headers are not supported for provider 'anthropic'",
        ),
        (
            "VAL-6/EDGE-4 Content-Type",
            with(|v| v["deltallm_params"]["auth_header_name"] = json!("content-type")),
            400,
            "must not be Content-Type",
        ),
        (
            "VAL-6 bad token",
            with(|v| v["deltallm_params"]["auth_header_name"] = json!("X Key")),
            400,
            "is not a valid HTTP header name",
        ),
        (
            "VAL-7/EDGE-4 Bearer {token}",
            with(|v| v["deltallm_params"]["auth_header_format"] = json!("Bearer {token}")),
            400,
            "may only use the {api_key} placeholder",
        ),
        (
            "VAL-7/EDGE-4 {{api_key}}",
            with(|v| v["deltallm_params"]["auth_header_format"] = json!("Token {{api_key}}")),
            400,
            "must include the {api_key} placeholder",
        ),
        (
            "VAL-7 positional",
            with(|v| v["deltallm_params"]["auth_header_format"] = json!("Bearer {}")),
            400,
            "may only use the {api_key} placeholder",
        ),
        (
            "VAL-7 format spec",
            with(|v| v["deltallm_params"]["auth_header_format"] = json!("{api_key:>10}")),
            400,
            "may only use the {api_key} placeholder",
        ),
        (
            "VAL-7 conversion",
            with(|v| v["deltallm_params"]["auth_header_format"] = json!("{api_key!r}")),
            400,
            "may only use the {api_key} placeholder",
        ),
        (
            "VAL-8 reserved mode",
            with(|v| v["deltallm_params"]["chat_batching"] = json!({"mode": "native_async_batch"})),
            400,
            "chat_batching.mode 'native_async_batch' is not supported",
        ),
        (
            "VAL-8 max_in_flight 0",
            with(|v| v["deltallm_params"]["chat_batching"] = json!({"max_in_flight": 0})),
            400,
            "chat_batching.max_in_flight must be an integer >= 1",
        ),
        (
            "VAL-8/EDGE-3 sync size 1",
            with(|v| {
                v["deltallm_params"]["chat_batching"] = json!({"mode": "sync_microbatch", "upstream_max_batch_size": 1})
            }),
            400,
            "chat_batching.upstream_max_batch_size",
        ),
        (
            "VAL-8 sync without size",
            with(|v| v["deltallm_params"]["chat_batching"] = json!({"mode": "sync_microbatch"})),
            400,
            "chat_batching.upstream_max_batch_size",
        ),
        (
            "VAL-8 sync heterogeneous",
            with(|v| {
                v["deltallm_params"]["chat_batching"] = json!({"mode": "sync_microbatch", "upstream_max_batch_size": 4, "require_homogeneous_params": false})
            }),
            400,
            "chat_batching.require_homogeneous_params",
        ),
        (
            "VAL-9 bad access group",
            with(|v| v["model_info"]["access_groups"] = json!(["-bad"])),
            400,
            "Invalid access group '-bad'",
        ),
        (
            "VAL-9 access groups not array",
            with(|v| v["model_info"]["access_groups"] = json!("beta")),
            400,
            "model_info.access_groups must be an array of strings",
        ),
        (
            "VAL-9 too many",
            with(|v| v["model_info"]["access_groups"] = json!((0..101).map(|i| format!("g{i}")).collect::<Vec<_>>())),
            400,
            "at most 100",
        ),
        (
            "VAL-10 timeout type",
            with(|v| v["deltallm_params"]["timeout"] = json!("slow")),
            400,
            "deltallm_params.timeout must be an integer",
        ),
        (
            "VAL-10 rpm type",
            with(|v| v["deltallm_params"]["rpm"] = json!(1.5)),
            400,
            "deltallm_params.rpm must be an integer",
        ),
        (
            "VAL-10 price type",
            with(|v| v["model_info"]["input_cost_per_token"] = json!("free")),
            400,
            "model_info.input_cost_per_token must be a number",
        ),
        (
            "VAL-10 negative weight",
            with(|v| v["model_info"]["weight"] = json!(-1)),
            400,
            "model_info.weight must be >= 0",
        ),
        (
            "VAL-10 mode",
            with(|v| v["model_info"]["mode"] = json!("video")),
            400,
            "model_info.mode 'video' is not supported",
        ),
        (
            "VAL-10 capacity fraction",
            with(|v| v["model_info"]["batch_capacity"] = json!({"capacity_fraction": 2})),
            400,
            "capacity_fraction must be in (0, 1]",
        ),
        (
            "CRED-4 unknown credential",
            with(|v| v["named_credential_id"] = json!("nope")),
            400,
            "named_credential_id is invalid",
        ),
    ]
}

on_both_backends!(every_invalid_payload_gets_its_error_and_changes_nothing, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let (s, original) = app.post("/ui/api/models", &with(|v| v["deployment_id"] = json!("keep-me"))).await;
    assert_eq!(s, 200, "{original}");
    let before = app.get("/ui/api/models/keep-me").await.1;

    for (case, payload, status, message) in invalid_creates() {
        let (s, body) = app.post("/ui/api/models", &payload).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert_eq!(s, status, "{case}: {body}");
        assert!(detail.contains(message), "{case}: expected '{message}' in '{detail}'");

        // The same rule guards updates of the stored deployment.
        let mut update = payload.clone();
        update.as_object_mut().unwrap().remove("deployment_id");
        let (s, body) = app.put("/ui/api/models/keep-me", &update).await;
        if case.starts_with("VAL-3 model_name") {
            // A blank name on update is normalized to "keep the stored name"? No: it is an explicit empty name.
            assert_eq!(s, 400, "{case} (update): {body}");
        } else if !case.starts_with("VAL-3 provider") {
            // Omitting provider on update keeps the stored one (merge semantics), so only that case may pass.
            assert_eq!(s, status, "{case} (update): {body}");
        }
    }
    // A provider removal on update goes through the merge and keeps the stored provider; restore the baseline.
    let after = app.get("/ui/api/models/keep-me").await.1;
    let strip = |mut v: Value| {
        for k in ["updated_at", "health", "healthy"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(strip(after), strip(before), "no rejected write changed the stored deployment");
    let (_, list) = app.get("/ui/api/models").await;
    assert_eq!(list["pagination"]["total"], 1, "no rejected create stored anything");

    // Malformed JSON → 422; duplicate id → 409 (DEP-2).
    let resp = app
        .client
        .post(app.url("/ui/api/models"))
        .bearer_auth(deltallm_e2e::MASTER_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.json::<Value>().await.unwrap()["detail"].as_str().unwrap().starts_with("Malformed JSON body"));
    let (s, b) = app.post("/ui/api/models", &with(|v| v["deployment_id"] = json!("keep-me"))).await;
    assert_eq!((s, b["detail"].as_str()), (409, Some("Deployment 'keep-me' already exists")));
    app.stop().await;
});

on_both_backends!(normalization_and_labels, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    // EDGE-2 access groups; EDGE-6 label; provider lower-cased; api_version blank → removed.
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({
                "model_name": "custom",
                "deployment_id": "custom-1",
                "deltallm_params": {"provider": " VLLM ", "model": " local ", "api_base": " http://127.0.0.1:9/v1 ", "api_version": "  ",
                    "auth_header_name": "Authorization", "auth_header_format": "Token {api_key}", "api_key": "k"},
                "model_info": {"access_groups": ["Beta", "support", "beta"]}
            }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["provider"], "vllm");
    assert_eq!(b["deltallm_params"]["model"], "local");
    assert_eq!(b["deltallm_params"]["api_base"], "http://127.0.0.1:9/v1");
    assert!(b["deltallm_params"].get("api_version").is_none());
    assert_eq!(b["model_info"]["access_groups"], json!(["beta", "support"]));
    assert_eq!(b["connection_summary"]["custom_auth_label"], "Authorization (Token)");
    assert_eq!(b["connection_summary"]["auth_header_name"], "Authorization");

    let (_, x) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "x", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://h/v1", "auth_header_name": "X-API-Key", "auth_header_format": "{api_key}"}}),
        )
        .await;
    assert_eq!(x["connection_summary"]["custom_auth_label"], "X-API-Key");

    // EDGE-3: chat_batching null clears a stored override.
    let (s, _) = app
        .put(
            "/ui/api/models/custom-1",
            &json!({"deltallm_params": {"chat_batching": {"mode": "concurrent", "max_in_flight": 4}}}),
        )
        .await;
    assert_eq!(s, 200);
    let reg = app.gateway.registry();
    assert_eq!(reg.deployments["custom-1"].record.deltallm_params["chat_batching"]["max_in_flight"], 4);
    let (s, _) = app.put("/ui/api/models/custom-1", &json!({"deltallm_params": {"chat_batching": null}})).await;
    assert_eq!(s, 200);
    assert!(app.gateway.registry().deployments["custom-1"].record.deltallm_params.get("chat_batching").is_none());
    app.stop().await;
});

/// Unknown routes and wrong methods answer in the shape their side of the
/// API uses: the OpenAI error object under `/v1` (and the other public
/// paths), `{"detail"}` under `/ui/api` (CONV-1). A 405 names the allowed methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_get_shaped_errors() {
    let db = deltallm_e2e::TestDb::create(deltallm_e2e::Backend::Sqlite).await.expect("sqlite");
    let app = TestApp::start(&db.url, test_settings()).await;

    let (s, body) = app.get("/v1/nothing/here").await;
    assert_eq!(s, 404);
    assert_eq!(
        body,
        json!({"error": {"message": "Invalid URL (GET /v1/nothing/here)", "type": "invalid_request_error", "param": null, "code": null}})
    );
    let (s, body) = app.post("/v1/chat/completion", &json!({"model": "x"})).await;
    assert_eq!((s, body["error"]["message"].as_str()), (404, Some("Invalid URL (POST /v1/chat/completion)")));

    let resp =
        app.client.get(app.url("/v1/chat/completions")).bearer_auth(deltallm_e2e::MASTER_KEY).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Method GET is not allowed on /v1/chat/completions");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (s, body) = app.send(reqwest::Method::DELETE, "/v1/models", None).await;
    assert_eq!((s, body["error"]["type"].as_str()), (405, Some("invalid_request_error")));

    let (s, body) = app.get("/ui/api/nothing").await;
    assert_eq!((s, body), (404, json!({"detail": "Not Found"})));
    let (s, body) = app.send(reqwest::Method::PATCH, "/ui/api/models", None).await;
    assert_eq!((s, body), (405, json!({"detail": "Method Not Allowed"})));

    // Known routes are untouched by the fallbacks.
    let (s, body) = app.get("/v1/models").await;
    assert_eq!((s, body["object"].as_str()), (200, Some("list")));
    app.stop().await;
    db.cleanup().await;
}
