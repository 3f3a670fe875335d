//! Per-deployment batch execution override `deltallm_params.chat_batching`
//! (DEP-5, VAL-8). The batch worker and the admin API both go through [`parse`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// How the batch worker runs chat items routed to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChatBatchingMode {
    /// One ordinary request per item, in parallel (the default).
    #[default]
    Concurrent,
    /// One request per item, no extra parallelism.
    Disabled,
    /// Several items per upstream call.
    SyncMicrobatch,
}

/// A validated override. `None` at the deployment level means "default concurrent".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatBatching {
    /// Execution mode.
    pub mode: ChatBatchingMode,
    /// Per-worker in-flight cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// Items per upstream call (sync microbatch only, ≥ 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_max_batch_size: Option<u64>,
    /// Estimated input-token cap per chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_total_input_tokens: Option<u64>,
    /// Only items with identical params share a chunk (must stay true for sync).
    pub require_homogeneous_params: bool,
}

impl ChatBatching {
    /// The in-flight cap the worker should honour: `disabled` ignores stored
    /// numerics (we differ from the reference here, VAL-8).
    pub fn effective_max_in_flight(&self) -> Option<u64> {
        match self.mode {
            ChatBatchingMode::Disabled => None,
            _ => self.max_in_flight,
        }
    }
}

const FIELDS: [&str; 5] =
    ["mode", "max_in_flight", "upstream_max_batch_size", "max_total_input_tokens", "require_homogeneous_params"];

fn positive_int(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 => Ok(Some(v)),
            _ => Err(Error::invalid(format!("chat_batching.{key} must be an integer >= 1"))),
        },
        Some(_) => Err(Error::invalid(format!("chat_batching.{key} must be an integer >= 1"))),
    }
}

/// Validate and normalize a `chat_batching` value. `null`/absent → `None`.
pub fn parse(value: Option<&Value>) -> Result<Option<ChatBatching>> {
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(Error::invalid("chat_batching must be an object or null")),
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Error::invalid(format!("chat_batching.{unknown} is not a known field")));
    }
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => ChatBatchingMode::Concurrent,
        Some(Value::String(s)) => match s.trim() {
            "" | "concurrent" => ChatBatchingMode::Concurrent,
            "disabled" => ChatBatchingMode::Disabled,
            "sync_microbatch" => ChatBatchingMode::SyncMicrobatch,
            other => {
                return Err(Error::invalid(format!(
                    "chat_batching.mode '{other}' is not supported; use concurrent, disabled or sync_microbatch"
                )));
            }
        },
        Some(_) => return Err(Error::invalid("chat_batching.mode must be a string")),
    };
    let max_in_flight = positive_int(obj, "max_in_flight")?;
    let upstream_max_batch_size = positive_int(obj, "upstream_max_batch_size")?;
    let max_total_input_tokens = positive_int(obj, "max_total_input_tokens")?;
    let require_homogeneous_params = match obj.get("require_homogeneous_params") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Error::invalid("chat_batching.require_homogeneous_params must be a boolean"));
        }
    };
    if mode == ChatBatchingMode::SyncMicrobatch {
        if upstream_max_batch_size.is_none_or(|n| n < 2) {
            return Err(Error::invalid("chat_batching.upstream_max_batch_size must be >= 2 for mode sync_microbatch"));
        }
        if !require_homogeneous_params {
            return Err(Error::invalid(
                "chat_batching.require_homogeneous_params cannot be false for mode sync_microbatch",
            ));
        }
    }
    Ok(Some(ChatBatching {
        mode,
        max_in_flight,
        upstream_max_batch_size,
        max_total_input_tokens,
        require_homogeneous_params,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(v: Value) -> String {
        parse(Some(&v)).unwrap_err().to_string()
    }

    #[test]
    fn null_and_absent_mean_default_concurrent() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(parse(Some(&Value::Null)).unwrap(), None);
    }

    #[test]
    fn val_8_table() {
        let ok = parse(Some(&json!({"mode": "concurrent", "max_in_flight": 4}))).unwrap().unwrap();
        assert_eq!((ok.mode, ok.max_in_flight), (ChatBatchingMode::Concurrent, Some(4)));
        let sync = parse(Some(&json!({"mode": "sync_microbatch", "upstream_max_batch_size": 8}))).unwrap().unwrap();
        assert_eq!(sync.upstream_max_batch_size, Some(8));
        let blank = parse(Some(&json!({"mode": "concurrent", "max_in_flight": ""}))).unwrap().unwrap();
        assert_eq!(blank.max_in_flight, None);

        assert!(err(json!({"mode": "native_async_batch"})).contains("not supported"));
        assert!(err(json!({"mode": "turbo"})).contains("not supported"));
        assert!(err(json!({"max_in_flight": 0})).contains("chat_batching.max_in_flight"));
        assert!(err(json!({"max_in_flight": -3})).contains("chat_batching.max_in_flight"));
        assert!(err(json!({"max_in_flight": 1.5})).contains("chat_batching.max_in_flight"));
        assert!(err(json!({"max_total_input_tokens": 0})).contains("max_total_input_tokens"));
        // EDGE-3: sync with size 1 names the field; absent size fails too.
        assert!(
            err(json!({"mode": "sync_microbatch", "upstream_max_batch_size": 1}))
                .contains("chat_batching.upstream_max_batch_size")
        );
        assert!(err(json!({"mode": "sync_microbatch"})).contains("chat_batching.upstream_max_batch_size"));
        assert!(
            err(json!({"mode": "sync_microbatch", "upstream_max_batch_size": 4, "require_homogeneous_params": false}))
                .contains("require_homogeneous_params")
        );
        assert!(err(json!("concurrent")).contains("object"));
        assert!(err(json!({"bogus": 1})).contains("chat_batching.bogus"));
    }

    #[test]
    fn disabled_ignores_stored_numerics() {
        let d = parse(Some(&json!({"mode": "disabled", "max_in_flight": 9}))).unwrap().unwrap();
        assert_eq!(d.effective_max_in_flight(), None);
    }
}
