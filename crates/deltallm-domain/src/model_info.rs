//! `model_info` validation (DEP-6, VAL-9, VAL-10). The map stays open: unknown
//! keys are kept; the listed keys are type- and range-checked.

use serde_json::{Map, Value};

use crate::deployment::Mode;
use crate::params::{int_field, number_field};
use crate::{Error, Result, access_groups};

/// Per-unit price keys (USD per unit, numbers ≥ 0).
pub const PRICE_KEYS: &[&str] = &[
    "input_cost_per_token",
    "output_cost_per_token",
    "input_cost_per_token_cache_hit",
    "output_cost_per_token_cache_hit",
    "input_cost_per_character",
    "output_cost_per_character",
    "input_cost_per_second",
    "output_cost_per_second",
    "input_cost_per_image",
    "output_cost_per_image",
    "input_cost_per_audio_token",
    "output_cost_per_audio_token",
    "batch_input_cost_per_token",
    "batch_output_cost_per_token",
    "batch_price_multiplier",
];

/// Integer keys ≥ 0.
const NON_NEGATIVE_INTS: &[&str] = &[
    "weight",
    "priority",
    "rpm_limit",
    "tpm_limit",
    "image_pm_limit",
    "audio_seconds_pm_limit",
    "char_pm_limit",
    "rerank_units_pm_limit",
];

/// Integer keys ≥ 1.
const POSITIVE_INTS: &[&str] =
    &["max_tokens", "max_input_tokens", "max_output_tokens", "output_vector_size", "upstream_max_batch_inputs"];

/// The workload mode a `model_info` declares (default chat).
pub fn mode_of(info: &Map<String, Value>) -> Result<Mode> {
    match info.get("mode") {
        None | Some(Value::Null) => Ok(Mode::Chat),
        Some(Value::String(s)) => Mode::parse(s.trim()),
        Some(_) => Err(Error::invalid("model_info.mode must be a string")),
    }
}

/// Validate and normalize in place; returns the mode.
pub fn validate(info: &mut Map<String, Value>) -> Result<Mode> {
    let mode = mode_of(info)?;
    if info.contains_key("mode") {
        info.insert("mode".into(), Value::String(mode.as_str().into()));
    }
    for key in PRICE_KEYS {
        number_field(info, key, &format!("model_info.{key}"), 0.0)?;
    }
    for key in NON_NEGATIVE_INTS {
        int_field(info, key, &format!("model_info.{key}"), 0)?;
    }
    for key in POSITIVE_INTS {
        int_field(info, key, &format!("model_info.{key}"), 1)?;
    }
    match info.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(Error::invalid("model_info.tags must be an array of strings"));
        }
    }
    if info.contains_key("access_groups") {
        let groups = access_groups::normalize_list(info.get("access_groups"), "model_info.access_groups")?;
        info.insert("access_groups".into(), Value::from(groups));
    }
    match info.get("default_params") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(Error::invalid("model_info.default_params must be an object"));
        }
    }
    match info.get("batch_capacity") {
        None | Some(Value::Null) => {}
        Some(Value::Object(cap)) => {
            int_field(cap, "max_in_flight", "model_info.batch_capacity.max_in_flight", 1)?;
            int_field(cap, "max_claim_work_units", "model_info.batch_capacity.max_claim_work_units", 1)?;
            if let Some(f) = number_field(cap, "capacity_fraction", "model_info.batch_capacity.capacity_fraction", 0.0)?
                && !(f > 0.0 && f <= 1.0)
            {
                return Err(Error::invalid("model_info.batch_capacity.capacity_fraction must be in (0, 1]"));
            }
        }
        Some(_) => {
            return Err(Error::invalid("model_info.batch_capacity must be an object"));
        }
    }
    Ok(mode)
}

/// The access groups of a validated `model_info`.
pub fn access_groups_of(info: &Map<String, Value>) -> Vec<String> {
    match info.get("access_groups") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(v: Value) -> Result<Mode> {
        let mut m = v.as_object().unwrap().clone();
        validate(&mut m)
    }

    #[test]
    fn val_10_table() {
        assert_eq!(check(json!({})).unwrap(), Mode::Chat);
        assert_eq!(check(json!({"mode": "embedding", "input_cost_per_token": 0.000001})).unwrap(), Mode::Embedding);
        let bad: &[(Value, &str)] = &[
            (json!({"mode": "video"}), "model_info.mode"),
            (json!({"mode": 3}), "model_info.mode"),
            (json!({"input_cost_per_token": "cheap"}), "model_info.input_cost_per_token"),
            (json!({"output_cost_per_token": -1.0}), "model_info.output_cost_per_token"),
            (json!({"weight": 1.5}), "model_info.weight"),
            (json!({"priority": -1}), "model_info.priority"),
            (json!({"rpm_limit": "10"}), "model_info.rpm_limit"),
            (json!({"max_tokens": 0}), "model_info.max_tokens"),
            (json!({"upstream_max_batch_inputs": 0}), "model_info.upstream_max_batch_inputs"),
            (json!({"tags": "a,b"}), "model_info.tags"),
            (json!({"access_groups": ["Bad Key"]}), "Invalid access group"),
            (json!({"default_params": []}), "model_info.default_params"),
            (json!({"batch_capacity": {"capacity_fraction": 0}}), "capacity_fraction"),
            (json!({"batch_capacity": {"capacity_fraction": 1.5}}), "capacity_fraction"),
            (json!({"batch_capacity": {"max_in_flight": 0}}), "batch_capacity.max_in_flight"),
        ];
        for (v, msg) in bad {
            let e = check(v.clone()).unwrap_err().to_string();
            assert!(e.contains(msg), "{v}: {e}");
        }
    }

    #[test]
    fn access_groups_are_normalized_in_place() {
        let mut m = json!({"access_groups": ["Beta", "support", "beta"]}).as_object().unwrap().clone();
        validate(&mut m).unwrap();
        assert_eq!(m["access_groups"], json!(["beta", "support"]));
    }
}
