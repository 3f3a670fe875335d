//! Configuration loading (CFG-1..3) and key resolution, in isolated jails
//! (own working directory and environment per test).

// figment's `Jail` fixes the closure error type to its own (large) `figment::Error`.
#![allow(clippy::result_large_err)]

use deltallm_bootstrap::config::load;
use deltallm_bootstrap::keys::resolve;
use figment::Jail;

fn err_of<T: std::fmt::Debug>(r: Result<T, deltallm_bootstrap::Error>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn missing_file_means_defaults() {
    Jail::expect_with(|_jail| {
        let loaded = load(None).expect("defaults");
        assert!(loaded.source.is_none());
        assert_eq!(loaded.listen_addr().unwrap().to_string(), "0.0.0.0:4002");
        let s = loaded.gateway_settings(None).unwrap();
        assert_eq!(s.router.routing_strategy, "simple-shuffle");
        assert_eq!(s.router.allowed_fails, 2);
        assert_eq!(s.router.timeout, 600.0);
        assert_eq!(s.max_request_body_bytes, 10 * 1024 * 1024);
        Ok(())
    });
}

#[test]
fn yaml_then_env_with_aliases_and_env_refs() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.yaml",
            r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_KEY_FOR_TEST
      api_base: os.environ/UNSET_BASE_FOR_TEST
  - model_name: local
    deployment_id: local-1
    deltallm_params: {provider: vllm, model: m, api_base: "http://127.0.0.1:8000/v1"}
    model_info: {mode: embedding}
router_settings:
  routing_strategy: weighted
  num_retries: 1
litellm_settings:
  fallbacks: [{gpt: [local]}]
general_settings:
  master_key: os.environ/MASTER_FOR_TEST
server:
  port: 4100
"#,
        )?;
        jail.set_env("OPENAI_KEY_FOR_TEST", "sk-from-env");
        jail.set_env("MASTER_FOR_TEST", "sk-master-0123456789abcdefghijklmnopq");
        jail.set_env("DELTALLM_PORT", "4200");
        jail.set_env("DELTALLM_ROUTER_SETTINGS__NUM_RETRIES", "3");
        let loaded = load(None).expect("load");
        assert_eq!(loaded.listen_addr().unwrap().port(), 4200, "env beats the file");
        assert_eq!(loaded.header_read_timeout(), Some(std::time::Duration::from_secs(30)), "default head timeout");
        let c = &loaded.config;
        assert_eq!(c.router_settings.routing_strategy, "weighted");
        assert_eq!(c.router_settings.num_retries, 3, "nested env override");
        assert_eq!(c.deltallm_settings.fallbacks.len(), 1, "litellm_settings alias");
        assert_eq!(c.general_settings.master_key.as_deref(), Some("sk-master-0123456789abcdefghijklmnopq"));
        let s = loaded.gateway_settings(None).unwrap();
        let gpt = &s.config_model_list[0];
        assert_eq!(gpt.deltallm_params["api_key"], "sk-from-env", "litellm_params alias and os.environ/ ref");
        assert!(!gpt.deltallm_params.contains_key("api_base"), "unresolvable ref → key absent");
        let local = &s.config_model_list[1];
        assert_eq!(local.deployment_id.as_deref(), Some("local-1"));
        // CFG-1: a present model_info materializes defaults.
        assert_eq!(local.model_info["weight"], 1);
        assert_eq!(local.model_info["priority"], 0);
        assert_eq!(local.model_info["mode"], "embedding");
        Ok(())
    });
}

#[test]
fn unknown_keys_fail_with_their_path() {
    Jail::expect_with(|jail| {
        jail.create_file("config.yaml", "general_settings:\n  master_kye: x\n")?;
        let e = err_of(load(None));
        assert!(e.contains("master_kye") && e.contains("general_settings"), "{e}");
        jail.create_file("config.yaml", "router_settings:\n  num_retrys: 2\n")?;
        let e = err_of(load(None));
        assert!(e.contains("num_retrys") && e.contains("router_settings"), "{e}");
        jail.create_file("config.yaml", "toplevel_typo: 1\n")?;
        assert!(err_of(load(None)).contains("toplevel_typo"));
        jail.create_file("config.yaml", "router_settings:\n  num_retries: many\n")?;
        assert!(err_of(load(None)).contains("num_retries"));
        Ok(())
    });
}

#[test]
fn explicit_config_path_must_exist_and_secret_managers_are_refused() {
    Jail::expect_with(|jail| {
        let e = err_of(load(Some("nope.yaml".into())));
        assert!(e.contains("nope.yaml") && e.contains("does not exist"), "{e}");
        jail.set_env("DELTALLM_CONFIG_PATH", "other.yaml");
        jail.create_file(
            "other.yaml",
            "model_list:\n  - model_name: a\n    deltallm_params: {model: m, api_key: 'aws.secretsmanager/prod/key'}\n",
        )?;
        let e = err_of(load(None));
        assert!(e.contains("model_list[0].deltallm_params.api_key") && e.contains("aws.secretsmanager"), "{e}");
        assert!(!e.contains("prod/key"), "the reference itself is not echoed: {e}");
        Ok(())
    });
}

#[test]
fn embedded_default_generates_private_keys_once() {
    Jail::expect_with(|jail| {
        jail.set_env("DELTALLM_DATA_DIR", "data");
        let first = resolve(&load(None).unwrap()).expect("resolve");
        assert!(first.database_url.starts_with("sqlite://") && first.database_url.contains("data/deltallm.db"));
        let master = first.master_key.clone().expect("generated master key");
        assert!(master.expose().len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["data/master_key", "data/salt_key"] {
                let mode = std::fs::metadata(jail.directory().join(f)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
        }
        let second = resolve(&load(None).unwrap()).unwrap();
        assert_eq!(second.master_key.unwrap().expose(), master.expose(), "reused on the next start");
        assert_eq!(second.salt_key.expose(), first.salt_key.expose());
        Ok(())
    });
}

#[test]
fn shared_database_requires_explicit_keys() {
    Jail::expect_with(|jail| {
        jail.set_env("DELTALLM_DATABASE_URL", "postgres://user:pw@db.internal/deltallm");
        let e = err_of(resolve(&load(None).unwrap()));
        assert!(e.contains("DELTALLM_MASTER_KEY") && e.contains("DELTALLM_SALT_KEY"), "{e}");
        assert!(!e.contains("pw"), "no credentials echoed: {e}");
        jail.set_env("DELTALLM_MASTER_KEY", "short");
        assert!(err_of(resolve(&load(None).unwrap())).contains("at least 32 characters"));
        jail.set_env("DELTALLM_MASTER_KEY", "sk-0123456789abcdefghijklmnopqrstuvwxyz");
        jail.set_env("DELTALLM_SALT_KEY", "change-me");
        assert!(err_of(resolve(&load(None).unwrap())).contains("change-me"));
        jail.set_env("DELTALLM_SALT_KEY", "a-real-salt-key-0123456789");
        let ok = resolve(&load(None).unwrap()).expect("explicit keys");
        assert!(ok.database_url.starts_with("postgres://"));
        Ok(())
    });
}

#[test]
fn fallback_lists_reach_the_core_and_strategy_typos_fail() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.yaml",
            r#"
router_settings:
  routing_strategy: least-busy
deltallm_settings:
  fallbacks: [{gpt: [claude]}, {gpt: [llama, claude]}]
  context_window_fallbacks: [{gpt: [gpt-long]}]
  content_policy_fallbacks: [{gpt: [local]}]
general_settings:
  failover_event_history_size: 7
"#,
        )?;
        let s = load(None).unwrap().gateway_settings(None).unwrap();
        assert_eq!(s.fallbacks["gpt"], ["llama", "claude"], "later entry wins");
        assert_eq!(s.context_window_fallbacks["gpt"], ["gpt-long"]);
        assert_eq!(s.content_policy_fallbacks["gpt"], ["local"]);
        assert_eq!(s.failover_event_history_size, 7);
        jail.create_file("config.yaml", "router_settings:\n  routing_strategy: round-robin\n")?;
        let e = err_of(load(None).unwrap().gateway_settings(None));
        assert!(e.contains("round-robin") && e.contains("simple-shuffle"), "{e}");
        jail.create_file("config.yaml", "deltallm_settings:\n  fallbacks: [{gpt: claude}]\n")?;
        let e = err_of(load(None).unwrap().gateway_settings(None));
        assert!(e.contains("deltallm_settings.fallbacks[0].gpt"), "{e}");
        Ok(())
    });
}

#[test]
fn the_example_config_loads_as_documented() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.example.yaml");
    Jail::expect_with(|jail| {
        jail.set_env("OPENAI_API_KEY", "sk-example");
        let loaded = load(Some(example.into())).expect("config.example.yaml is valid");
        let s = loaded.gateway_settings(None).expect("and yields settings");
        assert_eq!(s.config_model_list.len(), 2);
        assert_eq!(s.config_model_list[0].deltallm_params["api_key"], "sk-example");
        assert_eq!(s.router.route_groups.len(), 1);
        assert_eq!(s.registry_poll_interval, Some(std::time::Duration::from_secs(30)));
        Ok(())
    });
}

#[test]
fn upstream_ca_bundle_is_read_at_load_and_a_missing_file_is_named() {
    Jail::expect_with(|jail| {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        jail.create_file("private-ca.pem", pem)?;
        jail.create_file("config.yaml", "general_settings:\n  upstream_ca_bundle: private-ca.pem\n")?;
        let s = load(None).unwrap().gateway_settings(None).unwrap();
        assert_eq!(s.upstream_extra_root_certs_pem.as_deref(), Some(pem.as_bytes()));

        jail.create_file("config.yaml", "general_settings:\n  upstream_ca_bundle: /nonexistent/ca.pem\n")?;
        let e = err_of(load(None).unwrap().gateway_settings(None));
        assert!(e.contains("general_settings.upstream_ca_bundle: cannot read /nonexistent/ca.pem"), "{e}");

        jail.create_file("config.yaml", "general_settings: {}\n")?;
        assert!(load(None).unwrap().gateway_settings(None).unwrap().upstream_extra_root_certs_pem.is_none());
        Ok(())
    });
}

#[test]
fn unknown_keys_of_a_model_list_entry_are_named_not_silently_dropped() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.yaml",
            r#"
model_list:
  - model_name: ok
    deltallm_params: {provider: vllm, model: m, api_base: "http://127.0.0.1:8000/v1"}
  - model_name: typo
    deltallm_params: {provider: vllm, model: m, api_base: "http://127.0.0.1:8000/v1"}
    modle_info: {mode: embedding}
"#,
        )?;
        let loaded = load(None).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].starts_with("model_list[1].modle_info: unknown key, ignored"),
            "{:?}",
            loaded.warnings
        );
        assert!(loaded.warnings[0].contains("model_info"), "the message lists the keys an entry has");
        // The entry itself still loads, with the default mode.
        let s = loaded.gateway_settings(None).unwrap();
        assert_eq!(s.config_model_list.len(), 2);
        Ok(())
    });
}
