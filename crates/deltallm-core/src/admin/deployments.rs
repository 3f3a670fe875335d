//! Deployment administration (ADM-2, ADM-3, ADM-4, DEP-3, RUN-22).

use chrono::{DateTime, Utc};
use deltallm_domain::credential::NamedCredential;
use deltallm_domain::deployment::{
    self, Deployment, DeploymentInput, DeploymentPatch, WriteRules, access_group_warning,
};
use deltallm_domain::params::str_field;
use deltallm_domain::{ApiErrorKind, auth_header, provider, redaction};
use deltallm_router::{HealthSnapshot, UnixMs};
use deltallm_storage::DeploymentQuery;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::registry::ResolvedDeployment;
use crate::{Error, Gateway, Result};

/// ADM-3 `connection_summary`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionSummary {
    /// Effective base URL.
    pub api_base: Option<String>,
    /// API version.
    pub api_version: Option<String>,
    /// Region (Bedrock).
    pub region: Option<String>,
    /// Custom header name, when not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_header_name: Option<String>,
    /// Compact label of a custom header (`X-API-Key`, `Authorization (Token)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_auth_label: Option<String>,
}

/// ADM-3 entry.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    /// Id.
    pub deployment_id: String,
    /// Public name.
    pub model_name: String,
    /// RUN-3 provider.
    pub provider: String,
    /// Workload mode.
    pub mode: &'static str,
    /// `named` or `inline`.
    pub credential_source: &'static str,
    /// Inline key material stored.
    pub inline_credentials_present: bool,
    /// Compact connection facts.
    pub connection_summary: ConnectionSummary,
    /// Linked credential id.
    pub named_credential_id: Option<String>,
    /// Linked credential name.
    pub named_credential_name: Option<String>,
    /// Params, redacted.
    pub deltallm_params: Value,
    /// Model metadata.
    pub model_info: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// Live health (list and get only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Health detail (get only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSnapshot>,
    /// Why the runtime cannot route to it, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_error: Option<String>,
    /// List view flags (DEP-3: deployments of this name disagree on access groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A page of the admin list.
#[derive(Debug, Serialize)]
pub struct ModelPage {
    /// Entries.
    pub data: Vec<ModelEntry>,
    /// Pagination facts.
    pub pagination: Pagination,
}

/// ADM-2 pagination.
#[derive(Debug, Serialize)]
pub struct Pagination {
    /// Matching rows.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Offset.
    pub offset: u64,
    /// More pages follow.
    pub has_more: bool,
}

/// A create or update response: the stored entry plus DEP-3 warnings.
#[derive(Debug, Serialize)]
pub struct ModelWrite {
    /// The stored entry (stored params, no health).
    #[serde(flatten)]
    pub entry: ModelEntry,
    /// Non-fatal findings (differing access groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Result of `POST /models/{id}/health-check`.
#[derive(Debug, Serialize)]
pub struct HealthCheckResult {
    /// Id.
    pub deployment_id: String,
    /// Probe outcome.
    pub healthy: bool,
    /// Health after applying the probe.
    pub health: HealthSnapshot,
    /// Human-readable outcome.
    pub message: String,
    /// Upstream status, if a response came back.
    pub status_code: Option<u16>,
    /// When it ran.
    pub checked_at: DateTime<Utc>,
}

pub(crate) fn summary(provider_key: &str, params: &Map<String, Value>) -> ConnectionSummary {
    let mut s = ConnectionSummary {
        api_base: str_field(params, "api_base").map(str::to_owned),
        api_version: str_field(params, "api_version").map(str::to_owned),
        region: str_field(params, "region").map(str::to_owned),
        auth_header_name: None,
        custom_auth_label: None,
    };
    if provider::allows_custom_auth(provider_key) {
        let (name, format) =
            auth_header::effective(str_field(params, "auth_header_name"), str_field(params, "auth_header_format"));
        if let Some(label) = auth_header::custom_label(name, format) {
            s.auth_header_name = Some(name.to_owned());
            s.custom_auth_label = Some(label);
        }
    }
    s
}

fn entry(record: &Deployment, shown_params: &Map<String, Value>, credential_name: Option<String>) -> ModelEntry {
    let provider_key = record.provider();
    ModelEntry {
        deployment_id: record.deployment_id.clone(),
        model_name: record.model_name.clone(),
        mode: record.mode().as_str(),
        credential_source: if record.named_credential_id.is_some() { "named" } else { "inline" },
        inline_credentials_present: record.inline_credentials_present(),
        connection_summary: summary(&provider_key, shown_params),
        provider: provider_key,
        named_credential_id: record.named_credential_id.clone(),
        named_credential_name: credential_name,
        deltallm_params: redaction::redacted(&Value::Object(shown_params.clone())),
        model_info: redaction::redacted_model_info(&Value::Object(record.model_info.clone())),
        created_at: record.created_at,
        updated_at: record.updated_at,
        healthy: None,
        health: None,
        routing_error: None,
        warnings: Vec::new(),
    }
}

fn live_entry(resolved: &ResolvedDeployment, now: UnixMs, detail: bool) -> ModelEntry {
    let mut e = entry(&resolved.record, &resolved.effective_params, resolved.credential_name.clone());
    let snap = resolved.state.snapshot(now);
    e.healthy = Some(resolved.connection.is_some() && snap.healthy);
    e.routing_error = resolved.connection_error.clone();
    if detail {
        e.health = Some(snap);
    }
    e
}

fn audit_payload(d: &Deployment) -> Value {
    serde_json::json!({
        "model_name": d.model_name,
        "named_credential_id": d.named_credential_id,
        "deltallm_params": d.deltallm_params,
        "model_info": d.model_info,
    })
}

fn not_found() -> Error {
    Error::not_found("Deployment not found")
}

impl Gateway {
    /// ADM-2 list.
    pub async fn list_models(&self, query: DeploymentQuery) -> Result<ModelPage> {
        if !(1..=500).contains(&query.limit) {
            return Err(Error::invalid("limit must be between 1 and 500"));
        }
        let (rows, total) = self.store().query_deployments(&query).await?;
        let registry = self.registry();
        let now = UnixMs::now();
        let data = rows
            .into_iter()
            .map(|record| {
                let mut e = match registry.deployments.get(record.deployment_id.as_str()) {
                    // The registry holds the effective (credential-merged) view and live health.
                    Some(resolved) if resolved.record.updated_at == record.updated_at => {
                        live_entry(resolved, now, false)
                    }
                    _ => {
                        let mut e = entry(&record, &record.deltallm_params, None);
                        e.healthy = Some(true);
                        e
                    }
                };
                e.warnings.extend(registry.access_group_warnings.get(record.model_name.as_str()).cloned());
                e
            })
            .collect::<Vec<_>>();
        let has_more = query.offset + (data.len() as u64) < total;
        Ok(ModelPage { data, pagination: Pagination { total, limit: query.limit, offset: query.offset, has_more } })
    }

    /// ADM-2 get.
    pub async fn get_model(&self, id: &str) -> Result<ModelEntry> {
        let registry = self.registry();
        if let Some(resolved) = registry.deployments.get(id) {
            return Ok(live_entry(resolved, UnixMs::now(), true));
        }
        let record = self.store().get_deployment(id).await?.ok_or_else(not_found)?;
        Ok(entry(&record, &record.deltallm_params, None))
    }

    async fn linked_credential(&self, input: &DeploymentInput) -> Result<Option<NamedCredential>> {
        match &input.named_credential_id {
            Some(id) => Ok(self.store().get_credential(id).await?),
            None => Ok(None),
        }
    }

    async fn warnings_for(&self, model_name: &str) -> Result<Vec<String>> {
        let same = self.store().deployments_named(model_name).await?;
        let lists: Vec<(String, Vec<String>)> =
            same.iter().map(|d| (d.deployment_id.clone(), d.access_groups())).collect();
        Ok(access_group_warning(model_name, &lists).into_iter().collect())
    }

    /// A public name must not be a route-group key (one callable namespace,
    /// ADM-6) and its deployments must share one mode (DEP-3).
    async fn check_name_fits(&self, record: &Deployment, mode: deployment::Mode) -> Result<()> {
        if self.store().get_route_group(&record.model_name).await?.is_some() {
            return Err(Error::new(
                ApiErrorKind::Conflict,
                format!(
                    "Model name '{}' is already a route group key; callable keys must be unique",
                    record.model_name
                ),
            ));
        }
        let same = self.store().deployments_named(&record.model_name).await?;
        deployment::check_shared_mode(
            &record.model_name,
            mode,
            same.iter()
                .filter(|d| d.deployment_id != record.deployment_id)
                .map(|d| (d.deployment_id.as_str(), d.mode())),
        )?;
        Ok(())
    }

    async fn finish_write(&self, record: &Deployment) -> Result<ModelWrite> {
        let warnings = self.warnings_for(&record.model_name).await?;
        if let Err(e) = self.rebuild_registry().await {
            tracing::error!(error = %e, "registry rebuild after a deployment write failed");
            return Err(Error::internal());
        }
        let credential_name = match &record.named_credential_id {
            Some(id) => self.store().get_credential(id).await?.map(|c| c.name),
            None => None,
        };
        Ok(ModelWrite { entry: entry(record, &record.deltallm_params, credential_name), warnings })
    }

    /// ADM-4 create.
    pub async fn create_model(&self, body: &Value) -> Result<ModelWrite> {
        let input = DeploymentInput::from_json(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let credential = self.linked_credential(&input).await?;
        let valid = deployment::validate(input, credential.as_ref().map(NamedCredential::as_link), WriteRules::ADMIN)?;
        let input = valid.input;
        let now = Utc::now();
        let record = Deployment {
            deployment_id: input.deployment_id.unwrap_or_else(|| deployment::generate_id(&input.model_name)),
            model_name: input.model_name,
            named_credential_id: input.named_credential_id,
            deltallm_params: input.deltallm_params,
            model_info: input.model_info,
            created_at: now,
            updated_at: now,
        };
        self.check_name_fits(&record, valid.mode).await?;
        self.store().insert_deployment(&record).await?;
        tracing::info!(deployment_id = %record.deployment_id, model_name = %record.model_name, provider = %valid.provider, "deployment created");
        super::audit::record(
            "create",
            "deployment",
            &record.deployment_id,
            &deployment::changed_fields(None, &record),
            &audit_payload(&record),
        );
        self.finish_write(&record).await
    }

    /// ADM-4 update (merge semantics, EDGE-1).
    pub async fn update_model(&self, id: &str, body: &Value) -> Result<ModelWrite> {
        let patch = DeploymentPatch::from_json(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let stored = self.store().get_deployment(id).await?.ok_or_else(not_found)?;
        let input = patch.apply(&stored);
        let credential = self.linked_credential(&input).await?;
        let valid = deployment::validate(input, credential.as_ref().map(NamedCredential::as_link), WriteRules::ADMIN)?;
        let input = valid.input;
        let record = Deployment {
            deployment_id: stored.deployment_id.clone(),
            model_name: input.model_name,
            named_credential_id: input.named_credential_id,
            deltallm_params: input.deltallm_params,
            model_info: input.model_info,
            created_at: stored.created_at,
            updated_at: Utc::now(),
        };
        self.check_name_fits(&record, valid.mode).await?;
        self.store().update_deployment(&record).await?;
        tracing::info!(deployment_id = %record.deployment_id, "deployment updated");
        super::audit::record(
            "update",
            "deployment",
            &record.deployment_id,
            &deployment::changed_fields(Some(&stored), &record),
            &audit_payload(&record),
        );
        let mut out = self.finish_write(&record).await?;
        if stored.model_name != record.model_name {
            out.warnings.extend(self.warnings_for(&stored.model_name).await?);
        }
        Ok(out)
    }

    /// ADM-2 delete.
    pub async fn delete_model(&self, id: &str) -> Result<()> {
        let _guard = self.inner.write_lock.lock().await;
        if !self.store().delete_deployment(id).await? {
            return Err(not_found());
        }
        tracing::info!(deployment_id = %id, "deployment deleted");
        super::audit::record("delete", "deployment", id, &[], &Value::Null);
        self.rebuild_registry().await.map_err(|e| {
            tracing::error!(error = %e, "registry rebuild after delete failed");
            Error::internal()
        })
    }

    /// RUN-22 on-demand probe, applied to the deployment's health.
    pub async fn health_check(&self, id: &str) -> Result<HealthCheckResult> {
        let registry = self.registry();
        let Some(resolved) = registry.deployments.get(id) else {
            return match self.store().get_deployment(id).await? {
                Some(_) => {
                    Err(Error::new(ApiErrorKind::ServiceUnavailable, "Deployment is not loaded yet; retry shortly"))
                }
                None => Err(not_found()),
            };
        };
        let outcome = self.probe_deployment(resolved, false).await;
        let now = UnixMs::now();
        Ok(HealthCheckResult {
            deployment_id: id.to_owned(),
            healthy: outcome.healthy,
            health: resolved.state.snapshot(now),
            message: outcome.message,
            status_code: outcome.status_code,
            checked_at: Utc::now(),
        })
    }
}
