//! Audit events for admin mutations (ADM-9), emitted as structured log lines
//! on the `deltallm::audit` target so any log pipeline can route them.

use deltallm_domain::redaction;
use serde_json::Value;

/// Emit one audit event. `payload` is redacted again here, so a caller that
/// forgets to mask cannot leak a secret into the audit trail (CRED-7).
pub fn record(action: &str, resource: &str, resource_id: &str, changed_fields: &[String], payload: &Value) {
    let payload = redaction::redacted(payload);
    tracing::info!(
        target: "deltallm::audit",
        action,
        resource,
        resource_id,
        changed_fields = %changed_fields.join(","),
        payload = %payload,
        "audit"
    );
}
