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
