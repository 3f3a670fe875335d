//! CFG-4: `model_list` bootstrap into an empty database, never overwriting,
//! and config validation through the same domain rules as the admin API.

use deltallm_core::{DeploymentSource, Gateway};
use deltallm_domain::deployment::DeploymentInput;
use deltallm_e2e::{TestApp, on_both_backends, test_key_ring, test_settings};
use serde_json::json;

fn entry(v: serde_json::Value) -> DeploymentInput {
    DeploymentInput::from_json(&v).expect("entry")
}

on_both_backends!(model_list_bootstraps_an_empty_database_once, |url: String| async move {
    let mut settings = test_settings();
    settings.config_model_list = vec![
        entry(
            json!({"model_name": "cfg-chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-cfg"}}),
        ),
        entry(
            json!({"model_name": "cfg-emb", "deployment_id": "emb-1", "deltallm_params": {"provider": "vllm", "model": "e5", "api_base": "http://127.0.0.1:9/v1"}, "model_info": {"mode": "embedding"}}),
        ),
    ];
    let app = TestApp::start(&url, settings.clone()).await;
    let (_, list) = app.get("/ui/api/models").await;
    let ids: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|r| r["deployment_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cfg-chat-0", "emb-1"], "ids: given, or <model_name>-<index>");
    // Provider inferred from the model prefix (RUN-3); DEP-9 fills the OpenAI base at runtime only.
    let chat = &list["data"][0];
    assert_eq!(chat["provider"], "openai");
    assert_eq!(chat["connection_summary"]["api_base"], "https://api.openai.com/v1");
    assert!(
        app.gateway
            .store()
            .get_deployment("cfg-chat-0")
            .await
            .unwrap()
            .unwrap()
            .deltallm_params
            .get("api_base")
            .is_none()
    );
    let (s, _) = app.delete("/ui/api/models/emb-1").await;
    assert_eq!(s, 200);
    app.stop().await;

    // Next start: the table is not empty, so config never overwrites or re-adds.
    settings.config_model_list.push(entry(
        json!({"model_name": "late", "deltallm_params": {"provider": "vllm", "model": "x", "api_base": "http://h/v1"}}),
    ));
    let app = TestApp::start(&url, settings).await;
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(models["data"][0]["id"], "cfg-chat");
    app.stop().await;
});

on_both_backends!(invalid_config_entries_abort_start_naming_the_entry, |url: String| async move {
    let mut settings = test_settings();
    settings.config_model_list = vec![
        entry(json!({"model_name": "ok", "deltallm_params": {"provider": "vllm", "model": "m"}})),
        entry(
            json!({"model_name": "bad", "deltallm_params": {"provider": "anthropic", "model": "claude"}, "model_info": {"mode": "embedding"}}),
        ),
    ];
    let store = deltallm_bootstrap::connect_store(&url, test_key_ring()).await.unwrap();
    let err = Gateway::start(store.clone(), settings).await.err().expect("start must fail").to_string();
    assert!(
        err.contains("model_list[1] (bad)") && err.contains("Provider 'anthropic' does not support mode 'embedding'"),
        "{err}"
    );
    assert_eq!(store.count_deployments().await.unwrap(), 0, "nothing half-written");
});

on_both_backends!(config_entries_link_stored_named_credentials, |url: String| async move {
    // A credential created through the admin API, then referenced from config.
    let app = TestApp::start(&url, test_settings()).await;
    let (s, cred) = app
        .post(
            "/ui/api/named-credentials",
            &json!({"credential_id": "shared-vllm", "name": "Shared vLLM", "provider": "vllm",
                    "connection_config": {"api_base": "http://127.0.0.1:9/cred/v1", "api_key": "sk-cred"}}),
        )
        .await;
    assert_eq!(s, 200, "{cred}");
    app.stop().await;

    let mut settings = test_settings();
    settings.config_model_list =
        vec![entry(json!({"model_name": "linked", "deployment_id": "linked-1", "named_credential_id": "shared-vllm",
               "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://ignored/v1"}}))];
    let app = TestApp::start(&url, settings.clone()).await;
    let (s, got) = app.get("/ui/api/models/linked-1").await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["credential_source"], "named");
    assert_eq!(got["connection_summary"]["api_base"], "http://127.0.0.1:9/cred/v1", "the credential wins");
    app.stop().await;

    // An id that names no stored credential stops start-up and says which one.
    settings.config_model_list[0] = entry(
        json!({"model_name": "other", "named_credential_id": "nope", "deltallm_params": {"provider": "vllm", "model": "m"}}),
    );
    settings.deployment_source = DeploymentSource::ConfigOnly;
    let store = deltallm_bootstrap::connect_store(&url, test_key_ring()).await.unwrap();
    let err = Gateway::start(store, settings).await.err().expect("start must fail").to_string();
    assert!(err.contains("model_list[0] (other): named credential 'nope' does not exist"), "{err}");
});

on_both_backends!(db_only_refuses_to_start_on_an_empty_database, |url: String| async move {
    let mut settings = test_settings();
    settings.deployment_source = DeploymentSource::DbOnly;
    let store = deltallm_bootstrap::connect_store(&url, test_key_ring()).await.unwrap();
    let err = Gateway::start(store, settings.clone()).await.err().expect("start must fail").to_string();
    assert!(err.contains("db_only but the database holds no deployments"), "{err}");
    // With a model_list to bootstrap from, the same source starts and serves it.
    settings.config_model_list = vec![entry(
        json!({"model_name": "boot", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://127.0.0.1:9/v1"}}),
    )];
    let app = TestApp::start(&url, settings).await;
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "boot", "{models}");
    app.stop().await;
});

on_both_backends!(config_only_source_serves_config_without_touching_the_database, |url: String| async move {
    let mut settings = test_settings();
    settings.deployment_source = DeploymentSource::ConfigOnly;
    settings.config_model_list = vec![entry(
        json!({"model_name": "only-cfg", "deltallm_params": {"provider": "vllm", "model": "m", "api_base": "http://127.0.0.1:9/v1"}}),
    )];
    let app = TestApp::start(&url, settings).await;
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "only-cfg");
    assert_eq!(app.gateway.store().count_deployments().await.unwrap(), 0);
    app.stop().await;
});
