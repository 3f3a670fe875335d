//! Named credentials (CRED-1..11, ADM-5): CRUD, linking and precedence,
//! rotation reaching the next request, the delete guard, inline conversion
//! and its atomicity, key rotation at rest, and canary secrets that must not
//! surface in responses, logs or database bytes.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use deltallm_core::Gateway;
use deltallm_domain::deployment::Deployment;
use deltallm_e2e::{MASTER_KEY, TestApp, on_both_backends, test_key_ring, test_settings};
use deltallm_secrets::{Key, KeyRing};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const REDACTED: &str = "***REDACTED***";

fn vllm_credential(name: &str, api_base: &str, api_key: &str) -> Value {
    json!({"name": name, "provider": "vllm", "connection_config": {"api_base": api_base, "api_key": api_key}})
}

fn linked_deployment(id: &str, credential_id: &str) -> Value {
    json!({
        "model_name": id,
        "deployment_id": id,
        "named_credential_id": credential_id,
        "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://inline.invalid/v1", "api_key": "sk-inline-ignored"}
    })
}

fn inline_deployment(id: &str, provider: &str, api_base: &str, api_key: &str) -> Value {
    json!({
        "model_name": id,
        "deployment_id": id,
        "deltallm_params": {"provider": provider, "model": "m", "api_base": api_base, "api_key": api_key}
    })
}

async fn create_credential(app: &TestApp, body: &Value) -> String {
    let (s, b) = app.post("/ui/api/named-credentials", body).await;
    assert_eq!(s, 200, "{b}");
    b["credential_id"].as_str().unwrap().to_owned()
}

fn effective(app: &TestApp, id: &str) -> serde_json::Map<String, Value> {
    app.gateway.registry().deployments.get(id).expect("deployment loaded").effective_params.clone()
}

on_both_backends!(crud_validation_and_listing, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;

    let (s, created) = app
        .post(
            "/ui/api/named-credentials",
            &json!({"name": "  azure-prod ", "provider": "Azure", "metadata": {"team": "ml"},
                    "connection_config": {"api_key": " sk-azure-1 ", "api_base": "https://r.openai.azure.com/openai/v1", "api_version": ""}}),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["name"], "azure-prod");
    assert_eq!(created["provider"], "azure_openai", "azure folds into azure_openai");
    assert_eq!(created["connection_config"]["api_key"], REDACTED);
    assert_eq!(created["connection_config"]["api_base"], "https://r.openai.azure.com/openai/v1");
    assert!(created["connection_config"].get("api_version").is_none(), "empty strings are ignored");
    assert_eq!(created["credentials_present"], true);
    assert_eq!(created["usage_count"], 0);
    assert_eq!(created["metadata"], json!({"team": "ml"}));
    assert_eq!(created["connection_summary"]["api_base"], "https://r.openai.azure.com/openai/v1");
    let azure_id = created["credential_id"].as_str().unwrap().to_owned();
    assert_eq!(azure_id.len(), 36, "UUIDv4 when not supplied");

    let groq = create_credential(
        &app,
        &json!({"credential_id": "groq-main", "name": "groq", "provider": "groq",
                "connection_config": {"api_key": "gsk-1", "auth_header_name": "Authorization", "auth_header_format": "Token {api_key}"}}),
    )
    .await;
    assert_eq!(groq, "groq-main");

    // Duplicate name, duplicate id → 409.
    let (s, b) = app.post("/ui/api/named-credentials", &vllm_credential("groq", "http://x/v1", "k")).await;
    assert_eq!((s, b["detail"].as_str().unwrap()), (409, "A named credential named 'groq' already exists"));
    let (s, _) = app
        .post(
            "/ui/api/named-credentials",
            &json!({"credential_id": "groq-main", "name": "other", "provider": "groq", "connection_config": {"api_key": "k"}}),
        )
        .await;
    assert_eq!(s, 409);

    // CRED-2 / VAL-6 / VAL-7 over HTTP; malformed JSON → 422.
    for (body, want) in [
        (
            json!({"name": "a", "provider": "anthropic", "connection_config": {"api_key": "k", "region": "r"}}),
            "connection_config includes unsupported fields for provider 'anthropic': region",
        ),
        (
            json!({"name": "a", "provider": "openai", "connection_config": {"api_key": "k", "auth_header_name": "Content-Type"}}),
            "auth_header_name must not be Content-Type",
        ),
        (
            json!({"name": "a", "provider": "openai", "connection_config": {"api_key": "k", "auth_header_format": "Token {{api_key}}"}}),
            "auth_header_format must include the {api_key} placeholder",
        ),
        (
            json!({"name": "a", "provider": "bedrock", "connection_config": {"aws_access_key_id": "AKIA"}}),
            "aws_access_key_id and aws_secret_access_key must be set together",
        ),
        (
            json!({"name": "a", "provider": "nope", "connection_config": {"api_key": "k"}}),
            "Unsupported provider 'nope' for named credentials",
        ),
    ] {
        let (s, b) = app.post("/ui/api/named-credentials", &body).await;
        assert_eq!((s, b["detail"].as_str().unwrap_or_default()), (400, want), "{body}");
    }
    let resp = app
        .client
        .post(app.url("/ui/api/named-credentials"))
        .bearer_auth(MASTER_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);

    // List by name, filter by provider (aliases accepted).
    let (_, list) = app.get("/ui/api/named-credentials").await;
    let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["azure-prod", "groq"]);
    assert_eq!(list["data"][1]["connection_summary"]["custom_auth_label"], "Authorization (Token)");
    let (_, only_azure) = app.get("/ui/api/named-credentials?provider=azure").await;
    assert_eq!(only_azure["data"].as_array().unwrap().len(), 1);
    assert_eq!(only_azure["data"][0]["credential_id"], azure_id.as_str());

    // Get adds linked_deployments; unknown → 404.
    let (s, one) = app.get(&format!("/ui/api/named-credentials/{azure_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(one["linked_deployments"], json!([]));
    let (s, b) = app.get("/ui/api/named-credentials/missing").await;
    assert_eq!((s, b["detail"].as_str().unwrap()), (404, "Named credential not found"));

    // Update: omitted fields kept (EDGE-11), null removes, provider immutable, duplicate name 409.
    let path = format!("/ui/api/named-credentials/{azure_id}");
    let (s, b) = app.put(&path, &json!({"connection_config": {"api_version": "2024-10-21"}})).await;
    assert_eq!(s, 200, "{b}");
    let stored = app.gateway.store().get_credential(&azure_id).await.unwrap().unwrap();
    assert_eq!(stored.connection_config["api_key"], "sk-azure-1", "omitted secret kept");
    assert_eq!(stored.connection_config["api_version"], "2024-10-21");
    assert_eq!(stored.metadata, Some(json!({"team": "ml"})), "omitted metadata kept");
    let (s, _) = app.put(&path, &json!({"connection_config": {"api_version": null}, "metadata": null})).await;
    assert_eq!(s, 200);
    let stored = app.gateway.store().get_credential(&azure_id).await.unwrap().unwrap();
    assert!(!stored.connection_config.contains_key("api_version"), "null removes");
    assert_eq!(stored.metadata, None);
    let (s, b) = app.put(&path, &json!({"provider": "openai"})).await;
    assert_eq!((s, b["detail"].as_str().unwrap()), (400, "Named credential provider cannot be changed"));
    let (s, b) = app.put(&path, &json!({"name": "groq"})).await;
    assert_eq!(s, 409, "{b}");
    let (s, _) = app.put("/ui/api/named-credentials/missing", &json!({"name": "x"})).await;
    assert_eq!(s, 404);

    // Delete: unknown 404; unlinked → {deleted, credential_id}.
    let (s, _) = app.delete("/ui/api/named-credentials/missing").await;
    assert_eq!(s, 404);
    let (s, b) = app.delete("/ui/api/named-credentials/groq-main").await;
    assert_eq!((s, b), (200, json!({"deleted": true, "credential_id": "groq-main"})));

    // The fixed routes are not shadowed by /{id}.
    let (s, b) = app.get("/ui/api/named-credentials/inline-report").await;
    assert_eq!((s, b), (200, json!({"data": []})));

    // Admin auth is required.
    let resp = app.client.get(app.url("/ui/api/named-credentials")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    app.stop().await;
});

on_both_backends!(linking_precedence_and_delete_guard, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    let cred = create_credential(&app, &vllm_credential("vllm-shared", "http://cred.example/v1", "sk-cred")).await;

    // CRED-5: a linked deployment's inline connection fields are stripped on write.
    let (s, d) = app.post("/ui/api/models", &linked_deployment("a", &cred)).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["credential_source"], "named");
    assert_eq!(d["named_credential_name"], "vllm-shared");
    assert!(d["deltallm_params"].get("api_key").is_none() && d["deltallm_params"].get("api_base").is_none(), "{d}");
    let stored = app.gateway.store().get_deployment("a").await.unwrap().unwrap();
    assert!(!stored.deltallm_params.contains_key("api_key"));
    assert_eq!(effective(&app, "a")["api_key"], "sk-cred");
    let (_, entry) = app.get("/ui/api/models/a").await;
    assert_eq!(entry["connection_summary"]["api_base"], "http://cred.example/v1");
    assert_eq!(entry["deltallm_params"]["api_key"], REDACTED);

    // CRED-5 precedence when both sides hold a field (e.g. a config-bootstrapped
    // row): the credential wins on every overlapping field.
    let now = chrono::Utc::now();
    let overlap = Deployment {
        deployment_id: "b".into(),
        model_name: "b".into(),
        named_credential_id: Some(cred.clone()),
        deltallm_params: json!({"provider": "vllm", "model": "m", "api_base": "http://inline/v1", "api_key": "sk-inline", "timeout": 7})
            .as_object()
            .unwrap()
            .clone(),
        model_info: serde_json::Map::new(),
        created_at: now,
        updated_at: now,
    };
    app.gateway.store().insert_deployment(&overlap).await.unwrap();
    app.gateway.rebuild_registry().await.unwrap();
    let eff = effective(&app, "b");
    assert_eq!((eff["api_base"].as_str(), eff["api_key"].as_str()), (Some("http://cred.example/v1"), Some("sk-cred")));
    assert_eq!(eff["timeout"], 7, "non-overlapping deployment fields stay");

    // CRED-4: unknown id, provider mismatch; azure ≡ azure_openai (EDGE-5).
    let mut bad = linked_deployment("c", "nope");
    let (s, b) = app.post("/ui/api/models", &bad).await;
    assert_eq!((s, b["detail"].as_str().unwrap()), (400, "named_credential_id is invalid"));
    bad["named_credential_id"] = json!(cred);
    bad["deltallm_params"]["provider"] = json!("groq");
    let (s, b) = app.post("/ui/api/models", &bad).await;
    assert_eq!(
        (s, b["detail"].as_str().unwrap()),
        (400, "Named credential provider does not match deployment provider")
    );
    let azure = create_credential(
        &app,
        &json!({"name": "az", "provider": "azure_openai", "connection_config": {"api_key": "k", "api_base": "https://r.openai.azure.com/openai/v1"}}),
    )
    .await;
    let (s, b) = app
        .post(
            "/ui/api/models",
            &json!({"model_name": "az", "named_credential_id": azure, "deltallm_params": {"provider": "azure", "model": "gpt-4o"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // usage_count and linked_deployments.
    let (_, one) = app.get(&format!("/ui/api/named-credentials/{cred}")).await;
    assert_eq!(one["usage_count"], 2);
    assert_eq!(
        one["linked_deployments"],
        json!([{"deployment_id": "a", "model_name": "a"}, {"deployment_id": "b", "model_name": "b"}])
    );

    // CRED-9 / EDGE-11: delete while linked → 409, nothing removed.
    let (s, b) = app.delete(&format!("/ui/api/named-credentials/{cred}")).await;
    assert_eq!((s, b["detail"].as_str().unwrap()), (409, "Named credential is still linked to model deployments"));
    assert!(app.gateway.store().get_credential(&cred).await.unwrap().is_some());

    // An update that would leave linked deployments without a base URL is refused, and changes nothing.
    let (s, b) =
        app.put(&format!("/ui/api/named-credentials/{cred}"), &json!({"connection_config": {"api_base": null}})).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["detail"].as_str().unwrap().starts_with("This update would break linked deployment '"), "{b}");
    assert!(b["detail"].as_str().unwrap().ends_with("deltallm_params.api_base is required"), "{b}");
    assert_eq!(effective(&app, "a")["api_base"], "http://cred.example/v1");

    // Unlink both (inline values supplied again), then delete succeeds.
    for id in ["a", "b"] {
        let (s, b) = app
            .put(
                &format!("/ui/api/models/{id}"),
                &json!({"named_credential_id": null, "deltallm_params": {"api_base": "http://own/v1", "api_key": "sk-own"}}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["credential_source"], "inline");
    }
    let (s, _) = app.delete(&format!("/ui/api/named-credentials/{cred}")).await;
    assert_eq!(s, 200);
    app.stop().await;
});

on_both_backends!(rotation_reaches_the_next_request_without_restart, |url: String| async move {
    let upstream = MockServer::start().await;
    let api_base = format!("{}/v1", upstream.uri());
    let app = TestApp::start(&url, test_settings()).await;
    let cred = create_credential(&app, &vllm_credential("rotating", &api_base, "sk-old-1")).await;
    let (s, b) = app.post("/ui/api/models", &linked_deployment("rot", &cred)).await;
    assert_eq!(s, 200, "{b}");

    let completion = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    let mount = |key: &'static str| {
        let upstream = &upstream;
        let completion = completion.clone();
        async move {
            Mock::given(method("GET"))
                .and(path("/v1/models"))
                .and(header("authorization", format!("Bearer {key}").as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
                .expect(1)
                .mount(upstream)
                .await;
            Mock::given(method("POST"))
                .and(path("/v1/chat/completions"))
                .and(header("authorization", format!("Bearer {key}").as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_json(completion))
                .expect(1)
                .mount(upstream)
                .await;
        }
    };
    let chat = || async {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(MASTER_KEY)
            .json(&json!({"model": "rot", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    mount("sk-old-1").await;
    let (_, probe) = app.post("/ui/api/models/rot/health-check", &json!({})).await;
    assert_eq!(probe["healthy"], true, "{probe}");
    assert_eq!(chat().await, 200);
    upstream.verify().await;

    // Rotate: the PUT returns after the registry rebuild, so the very next
    // request carries the new key. No restart.
    upstream.reset().await;
    mount("sk-new-2").await;
    let (s, b) = app
        .put(&format!("/ui/api/named-credentials/{cred}"), &json!({"connection_config": {"api_key": "sk-new-2"}}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(chat().await, 200);
    let (_, probe) = app.post("/ui/api/models/rot/health-check", &json!({})).await;
    assert_eq!(probe["healthy"], true, "{probe}");
    upstream.verify().await;
    app.stop().await;
});

on_both_backends!(inline_report_and_conversion, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    for (id, base, key) in [
        ("p1", "http://shared/v1", "sk-shared"),
        ("p2", "http://shared/v1", "sk-shared"),
        ("p3", "http://other/v1", "sk-other"),
    ] {
        let (s, b) = app.post("/ui/api/models", &inline_deployment(id, "vllm", base, key)).await;
        assert_eq!(s, 200, "{b}");
    }
    let cred = create_credential(&app, &vllm_credential("already", "http://shared/v1", "sk-shared")).await;
    let (s, _) = app.post("/ui/api/models", &linked_deployment("linked", &cred)).await;
    assert_eq!(s, 200);

    let (s, report) = app.get("/ui/api/named-credentials/inline-report").await;
    assert_eq!(s, 200, "{report}");
    let groups = report["data"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "linked deployments are not reported: {report}");
    let shared = &groups[0];
    assert_eq!(shared["deployment_count"], 2);
    assert_eq!(shared["provider"], "vllm");
    assert_eq!(shared["connection_config"], json!({"api_base": "http://shared/v1", "api_key": REDACTED}));
    assert_eq!(
        shared["deployments"],
        json!([{"deployment_id": "p1", "model_name": "p1"}, {"deployment_id": "p2", "model_name": "p2"}])
    );
    let fingerprint = shared["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 64);

    // Rejections leave everything as it was.
    let convert = |name: &str, ids: Value| json!({"name": name, "provider": "vllm", "fingerprint": fingerprint, "deployment_ids": ids});
    for (body, status, want) in [
        (convert("new", json!(["p1", "p3"])), 400, "Deployment 'p3' does not match fingerprint"),
        (convert("new", json!(["p1", "linked"])), 400, "Deployment 'linked' is already linked to a named credential"),
        (convert("new", json!(["p1", "ghost"])), 400, "Deployment 'ghost' does not exist"),
        (convert("already", json!(["p1"])), 409, "A named credential named 'already' already exists"),
        (convert("new", json!([])), 400, "deployment_ids must be a non-empty array of deployment ids"),
    ] {
        let (s, b) = app.post("/ui/api/named-credentials/convert-inline-group", &body).await;
        assert_eq!((s, b["detail"].as_str().unwrap_or_default()), (status, want), "{body}");
    }
    assert_eq!(app.gateway.store().all_credentials().await.unwrap().len(), 1);
    assert!(app.gateway.store().get_deployment("p1").await.unwrap().unwrap().named_credential_id.is_none());

    let (s, done) =
        app.post("/ui/api/named-credentials/convert-inline-group", &convert("shared", json!(["p1", "p2"]))).await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["deployment_ids"], json!(["p1", "p2"]));
    assert_eq!(done["credential"]["connection_config"], json!({"api_base": "http://shared/v1", "api_key": REDACTED}));
    assert_eq!(done["credential"]["usage_count"], 2);
    let new_id = done["credential"]["credential_id"].as_str().unwrap().to_owned();
    for id in ["p1", "p2"] {
        let d = app.gateway.store().get_deployment(id).await.unwrap().unwrap();
        assert_eq!(d.named_credential_id.as_deref(), Some(new_id.as_str()));
        assert!(!d.deltallm_params.contains_key("api_key") && !d.deltallm_params.contains_key("api_base"), "stripped");
        assert_eq!(effective(&app, id)["api_key"], "sk-shared", "reloaded with the credential");
    }
    let (_, report) = app.get("/ui/api/named-credentials/inline-report").await;
    assert_eq!(report["data"].as_array().unwrap().len(), 1);
    assert_eq!(report["data"][0]["deployments"][0]["deployment_id"], "p3");
    app.stop().await;
});

on_both_backends!(conversion_is_all_or_nothing, |url: String| async move {
    let app = TestApp::start(&url, test_settings()).await;
    for id in ["q1", "q2", "q3"] {
        let (s, _) = app.post("/ui/api/models", &inline_deployment(id, "vllm", "http://s/v1", "sk-s")).await;
        assert_eq!(s, 200);
    }
    let store = app.gateway.store();
    let mut relinked = Vec::new();
    for id in ["q1", "q2", "q3"] {
        let d = store.get_deployment(id).await.unwrap().unwrap();
        let read_at = d.updated_at;
        let mut linked = d;
        linked.deltallm_params.remove("api_key");
        linked.deltallm_params.remove("api_base");
        linked.named_credential_id = Some("conv-1".into());
        relinked.push((linked, read_at));
    }
    // Another writer changes q3 after it was read: the conversion fails half-way.
    let (s, _) = app.put("/ui/api/models/q3", &json!({"model_info": {"mode": "chat", "priority": 1}})).await;
    assert_eq!(s, 200);
    let now = chrono::Utc::now();
    let credential = deltallm_domain::credential::NamedCredential {
        credential_id: "conv-1".into(),
        name: "conv".into(),
        provider: "vllm".into(),
        connection_config: json!({"api_base": "http://s/v1", "api_key": "sk-s"}).as_object().unwrap().clone(),
        metadata: None,
        created_by_account_id: None,
        created_at: now,
        updated_at: now,
    };
    let err = store.convert_inline_group(&credential, &relinked).await.unwrap_err();
    assert_eq!(err.to_string(), "Deployment 'q3' changed during the conversion; nothing was changed");
    // Nothing changed: no credential, q1 and q2 still inline with their key.
    assert!(store.get_credential("conv-1").await.unwrap().is_none());
    for id in ["q1", "q2", "q3"] {
        let d = store.get_deployment(id).await.unwrap().unwrap();
        assert_eq!(d.named_credential_id, None, "{id}");
        assert_eq!(d.deltallm_params["api_key"], "sk-s", "{id}");
    }
    // With fresh reads the same conversion commits.
    relinked[2].1 = store.get_deployment("q3").await.unwrap().unwrap().updated_at;
    store.convert_inline_group(&credential, &relinked).await.unwrap();
    assert_eq!(store.credential_usage("conv-1").await.unwrap(), 3);
    app.stop().await;
});

on_both_backends!(key_rotation_reencrypts_everything, |url: String| async move {
    let old_ring = test_key_ring();
    let old_id = old_ring.current_id().to_owned();
    let app = TestApp::start(&url, test_settings()).await;
    let cred = create_credential(&app, &vllm_credential("rot-cred", "http://c/v1", "sk-rot-cred")).await;
    let (s, _) = app.post("/ui/api/models", &linked_deployment("linked", &cred)).await;
    assert_eq!(s, 200);
    for id in ["i1", "i2"] {
        let (s, _) = app.post("/ui/api/models", &inline_deployment(id, "vllm", "http://i/v1", "sk-rot-inline")).await;
        assert_eq!(s, 200);
    }
    app.stop().await;

    // A wrong key at start-up fails, naming the key id and how many records it cannot read.
    let new_key = Key::derive("a-brand-new-salt-key-0123456789").unwrap();
    let new_id = new_key.id().to_owned();
    let only_new = || KeyRing::new(new_key.clone());
    let store = deltallm_bootstrap::connect_store(&url, only_new()).await.unwrap();
    let err = Gateway::start(store, test_settings()).await.err().expect("start must fail").to_string();
    assert!(err.contains(&format!("key id '{old_id}' (3 records)")), "{err}");
    assert!(err.contains(&new_id), "{err}");

    // rotate: ring(current=new, previous=[old]); reports what changed; a re-run changes nothing.
    let ring = KeyRing::with_previous(new_key.clone(), vec![Key::derive(deltallm_e2e::SALT_KEY).unwrap()]);
    let store = deltallm_bootstrap::connect_store(&url, ring).await.unwrap();
    let done = store.reencrypt_all().await.unwrap();
    assert_eq!((done.deployments, done.credentials, done.skipped), (2, 1, 0), "linked deployment holds no secret");
    assert_eq!(done.from_key_ids, vec![old_id.clone()]);
    let again = store.reencrypt_all().await.unwrap();
    assert_eq!((again.deployments, again.credentials), (0, 0));

    // The new key alone now opens everything and serves the same values.
    let app = TestApp::start_with_ring(&url, test_settings(), only_new()).await;
    assert!(app.gateway.store().unreadable_secrets().await.unwrap().is_empty());
    assert_eq!(effective(&app, "linked")["api_key"], "sk-rot-cred");
    assert_eq!(effective(&app, "i2")["api_key"], "sk-rot-inline");
    app.stop().await;
});

/// The embedded default: `rotate-key` swaps the data-directory key file
/// (keeping `salt_key.previous`) and the next start uses the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_command_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("server:\n  data_dir: {}\n", data_dir.display())).unwrap();

    let prepared = deltallm_bootstrap::prepare(Some(config.clone())).await.unwrap();
    let watch = prepared.salt_key_watch.clone();
    assert!(watch.is_some(), "the generated salt key is watched");
    let running = Gateway::start(prepared.store, prepared.settings).await.unwrap();
    deltallm_bootstrap::serve::watch_salt_key(&running, watch);
    running.create_credential(&vllm_credential("embedded", "http://e/v1", "sk-embedded")).await.unwrap();
    running
        .create_model(&json!({"model_name": "m", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://e/v1", "api_key": "sk-e2"}}))
        .await
        .unwrap();
    let old = std::fs::read_to_string(data_dir.join("salt_key")).unwrap().trim().to_owned();

    let key_file = dir.path().join("new-salt");
    std::fs::write(&key_file, "embedded-new-salt-key-0123456789\n").unwrap();
    let new_key =
        deltallm_bootstrap::rotate::read_new_key(&deltallm_bootstrap::rotate::NewKeySource::File(key_file)).unwrap();
    let report = deltallm_bootstrap::rotate::rotate_key(Some(config.clone()), new_key).await.unwrap();
    let old_id = Key::derive(&old).unwrap().id().to_owned();
    let new_id = Key::derive("embedded-new-salt-key-0123456789").unwrap().id().to_owned();
    assert_eq!(
        report.to_string(),
        format!("re-encrypted 1 deployment(s) and 1 named credential(s) from key id {old_id} to key id {new_id}")
    );
    assert_eq!(std::fs::read_to_string(data_dir.join("salt_key")).unwrap().trim(), "embedded-new-salt-key-0123456789");
    assert_eq!(std::fs::read_to_string(data_dir.join("salt_key.previous")).unwrap().trim(), old);

    // The running gateway follows the rotation without a restart: it seals
    // with the new key and admin writes keep working.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while running.store().key_ring().current_id() != new_id {
        assert!(std::time::Instant::now() < deadline, "the running gateway did not pick up the new salt key");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    running
        .create_model(&json!({"model_name": "m2", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://e/v1", "api_key": "sk-e3"}}))
        .await
        .expect("admin writes work right after the rotation");
    assert_eq!(running.registry().deployments.len(), 2);
    drop(running);

    // Next start reads the new key file and everything.
    let prepared = deltallm_bootstrap::prepare(Some(config.clone())).await.unwrap();
    assert_eq!(prepared.store.key_ring().current_id(), new_id);
    let gateway = Gateway::start(prepared.store, prepared.settings).await.unwrap();
    let listed = gateway.list_credentials(None).await.unwrap();
    assert_eq!(listed.data.len(), 1);
    let stored = gateway.store().get_credential(&listed.data[0].credential_id).await.unwrap().unwrap();
    assert_eq!(stored.connection_config["api_key"], "sk-embedded");

    // A too-short new key is refused before anything happens.
    let short = dir.path().join("short");
    std::fs::write(&short, "short").unwrap();
    assert!(deltallm_bootstrap::rotate::read_new_key(&deltallm_bootstrap::rotate::NewKeySource::File(short)).is_err());
}

/// Every log line of this test binary, at debug level, from the first use on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink(buf.clone());
        // The mock upstream legitimately receives the key; its own logs are not the gateway's.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,wiremock=off"))
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init();
        buf
    })
    .clone()
}

/// Every byte the database holds for our tables, as text.
async fn database_text(app: &TestApp, url: &str) -> Vec<u8> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap();
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                bytes.extend(b);
            }
        }
        return bytes;
    }
    let db = app.gateway.store().connection();
    let mut out = Vec::new();
    for table in ["deployments", "named_credentials", "spend_logs"] {
        let sql = format!("SELECT coalesce(string_agg(t::text, '|'), '') AS dump FROM {table} t");
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
        let dump: String = row.try_get("", "dump").unwrap();
        out.extend(dump.into_bytes());
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

on_both_backends!(canary_secrets_never_leak, |url: String| async move {
    let logs = captured_logs();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let canaries: Vec<String> = ["cred", "rotated", "inline", "meta", "aws", "nested", "info", "header"]
        .iter()
        .map(|k| format!("canary-{k}-{tag}"))
        .collect();
    let [cred_key, rotated_key, inline_key, meta_token, aws_secret, nested_secret, info_token, header_key] =
        &canaries[..]
    else {
        unreachable!()
    };

    let upstream = MockServer::start().await;
    let api_base = format!("{}/v1", upstream.uri());
    // An upstream that echoes the key it got in its error message.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"message": format!("Incorrect API key provided: {rotated_key}"), "type": "invalid_request_error"}}),
        ))
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(401).set_body_string(format!("bad key {rotated_key}")))
        .mount(&upstream)
        .await;

    let app = TestApp::start(&url, test_settings()).await;
    let mut bodies: Vec<String> = Vec::new();
    let mut keep = |(s, b): (u16, Value)| {
        bodies.push(b.to_string());
        (s, b)
    };

    let (s, b) = keep(
        app.post(
            "/ui/api/named-credentials",
            &json!({"name": "canary", "provider": "vllm", "connection_config": {"api_base": api_base, "api_key": cred_key},
                    "metadata": {"owner": "ml", "owner_token": meta_token}}),
        )
        .await,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["metadata"]["owner_token"], REDACTED);
    let cred = b["credential_id"].as_str().unwrap().to_owned();
    keep(
        app.post(
            "/ui/api/named-credentials",
            &json!({"name": "bedrock", "provider": "bedrock", "connection_config": {"region": "us-east-1", "aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": aws_secret}}),
        )
        .await,
    );
    keep(app.post("/ui/api/models", &linked_deployment("canary-linked", &cred)).await);
    keep(app.post("/ui/api/models", &inline_deployment("canary-inline", "vllm", &api_base, inline_key)).await);
    // Secret-named keys below the top level of params, and in model_info.
    let (s, b) = keep(
        app.post(
            "/ui/api/models",
            &json!({"model_name": "canary-nested", "deployment_id": "canary-nested",
                    "deltallm_params": {"provider": "vllm", "model": "m", "api_base": api_base,
                                        "extra_body": {"client_secret": nested_secret}},
                    "model_info": {"input_cost_per_token": 0.000001, "hooks": {"webhook_token": info_token},
                                   "default_params": {"extra_headers": {"X-Api-Key": header_key}}}}),
        )
        .await,
    );
    assert_eq!(s, 200, "{b}");
    let stored = app.gateway.store().get_deployment("canary-nested").await.unwrap().unwrap();
    assert_eq!(stored.deltallm_params["extra_body"]["client_secret"], nested_secret.as_str(), "sealed, not lost");
    assert_eq!(stored.model_info["hooks"]["webhook_token"], info_token.as_str());
    let (_, shown) = keep(app.get("/ui/api/models/canary-nested").await);
    assert_eq!(shown["model_info"]["input_cost_per_token"], 0.000001, "prices stay visible");
    assert_eq!(shown["model_info"]["hooks"]["webhook_token"], REDACTED);
    keep(
        app.put(&format!("/ui/api/named-credentials/{cred}"), &json!({"connection_config": {"api_key": rotated_key}}))
            .await,
    );
    // Errors carrying secrets in their input.
    keep(
        app.post(
            "/ui/api/named-credentials",
            &json!({"name": "", "provider": "vllm", "connection_config": {"api_key": cred_key}}),
        )
        .await,
    );
    keep(
        app.post(
            "/ui/api/named-credentials",
            &json!({"name": "x", "provider": "vllm", "connection_config": {"api_key": cred_key, "region": "r"}}),
        )
        .await,
    );
    keep(
        app.put(
            &format!("/ui/api/named-credentials/{cred}"),
            &json!({"provider": "groq", "connection_config": {"api_key": cred_key}}),
        )
        .await,
    );
    // Reads of every kind.
    keep(app.get("/ui/api/named-credentials").await);
    keep(app.get(&format!("/ui/api/named-credentials/{cred}")).await);
    keep(app.get("/ui/api/models").await);
    keep(app.get("/ui/api/models/canary-linked").await);
    keep(app.get("/ui/api/models/canary-inline").await);
    keep(app.get("/ui/api/named-credentials/inline-report").await);
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"model": "canary-linked", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let chat_text = resp.text().await.unwrap();
    assert!(chat_text.contains("Incorrect API key provided"), "the upstream error is relayed: {chat_text}");
    keep((0, Value::String(chat_text)));
    keep(app.post("/ui/api/models/canary-linked/health-check", &json!({})).await);
    keep(app.get("/ui/api/models/canary-linked").await);
    let fingerprint = {
        let (_, r) = app.get("/ui/api/named-credentials/inline-report").await;
        r["data"][0]["fingerprint"].as_str().unwrap().to_owned()
    };
    keep(
        app.post(
            "/ui/api/named-credentials/convert-inline-group",
            &json!({"name": "converted", "provider": "vllm", "fingerprint": fingerprint, "deployment_ids": ["canary-inline"]}),
        )
        .await,
    );
    keep(app.get("/ui/api/named-credentials").await);
    app.gateway.flush_spend().await;

    // The secrets are really in use (so their absence below means something).
    let eff = effective(&app, "canary-linked");
    assert_eq!(eff["api_key"].as_str(), Some(rotated_key.as_str()));

    let db = database_text(&app, &url).await;
    app.stop().await;
    let logs = logs.lock().unwrap().clone();
    let log_text = String::from_utf8_lossy(&logs);
    assert!(
        log_text.contains("deltallm::audit") && log_text.contains("connection_config.api_key"),
        "audit lines name the changed fields"
    );
    for canary in &canaries {
        for body in &bodies {
            assert!(!body.contains(canary.as_str()), "{canary} in a response: {body}");
        }
        assert!(!contains(&logs, canary), "{canary} in the logs");
        assert!(!contains(&db, canary), "{canary} in the database");
    }
});
