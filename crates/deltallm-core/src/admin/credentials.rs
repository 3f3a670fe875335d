//! Named credential administration (ADM-5, CRED-1..11): CRUD, the inline
//! credential report and the conversion of an inline group into one named
//! credential. Responses and audit lines only ever carry redacted values.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use deltallm_domain::credential::{
    self, CredentialInput, CredentialPatch, NamedCredential, changed_fields, inline_fingerprint,
    validate_connection_config, validate_credential_id, validate_provider,
};
use deltallm_domain::deployment::{self, Deployment, DeploymentInput, WriteRules, strip_connection_fields};
use deltallm_domain::{ApiErrorKind, redaction};
use deltallm_storage::LinkedDeployment;
use serde::Serialize;
use serde_json::{Map, Value};

use super::audit;
use super::deployments::{ConnectionSummary, summary};
use crate::{Error, Gateway, Result};

/// `linked_deployments` cap on a single credential (ADM-5).
const LINKED_LIMIT: u64 = 25;

/// ADM-5 credential as shown: secrets masked.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialView {
    /// Id.
    pub credential_id: String,
    /// Unique name.
    pub name: String,
    /// Canonical provider.
    pub provider: String,
    /// Connection fields, redacted.
    pub connection_config: Value,
    /// CRED-8: some config value is non-empty.
    pub credentials_present: bool,
    /// Compact connection facts (ADM-3 labels).
    pub connection_summary: ConnectionSummary,
    /// Metadata, redacted.
    pub metadata: Option<Value>,
    /// Creator account.
    pub created_by_account_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// Linked deployments (CRED-8).
    pub usage_count: u64,
    /// Up to 25 linked deployments (get only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_deployments: Option<Vec<LinkedDeployment>>,
}

/// `GET /named-credentials`.
#[derive(Debug, Serialize)]
pub struct CredentialList {
    /// Credentials by name.
    pub data: Vec<CredentialView>,
}

/// One group of the inline report: unlinked deployments repeating the same
/// inline connection (CRED-11).
#[derive(Debug, Serialize)]
pub struct InlineGroup {
    /// SHA-256 fingerprint of `{provider, connection_config}`.
    pub fingerprint: String,
    /// Canonical provider.
    pub provider: String,
    /// The shared inline fields, redacted.
    pub connection_config: Value,
    /// Whether key material is among them.
    pub credentials_present: bool,
    /// Compact connection facts.
    pub connection_summary: ConnectionSummary,
    /// How many deployments share it.
    pub deployment_count: usize,
    /// The deployments.
    pub deployments: Vec<LinkedDeployment>,
}

/// `GET /named-credentials/inline-report`.
#[derive(Debug, Serialize)]
pub struct InlineReport {
    /// Groups, largest first.
    pub data: Vec<InlineGroup>,
}

/// `POST /named-credentials/convert-inline-group` result.
#[derive(Debug, Serialize)]
pub struct Conversion {
    /// The new credential.
    pub credential: CredentialView,
    /// Deployments now linked to it.
    pub deployment_ids: Vec<String>,
}

fn view(c: &NamedCredential, usage_count: u64, linked: Option<Vec<LinkedDeployment>>) -> CredentialView {
    CredentialView {
        credential_id: c.credential_id.clone(),
        name: c.name.clone(),
        provider: c.provider.clone(),
        connection_config: redaction::redacted(&Value::Object(c.connection_config.clone())),
        credentials_present: c.credentials_present(),
        connection_summary: summary(&c.provider, &c.connection_config),
        metadata: c.metadata.as_ref().map(redaction::redacted),
        created_by_account_id: c.created_by_account_id.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
        usage_count,
        linked_deployments: linked,
    }
}

fn not_found() -> Error {
    Error::not_found("Named credential not found")
}

fn view_json(v: &CredentialView) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A convert request after shape checks.
struct ConvertRequest {
    credential_id: Option<String>,
    name: String,
    provider: String,
    fingerprint: String,
    deployment_ids: Vec<String>,
    metadata: Option<Value>,
}

fn convert_request(body: &Value) -> Result<ConvertRequest> {
    let Value::Object(obj) = body else {
        return Err(Error::invalid("request body must be a JSON object"));
    };
    let text = |key: &str| match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(Error::invalid(format!("{key} is required"))),
    };
    let name = text("name")?;
    let provider = validate_provider(&text("provider")?)?;
    let fingerprint = text("fingerprint")?;
    let credential_id = match obj.get("credential_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(validate_credential_id(s)?),
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(_) => return Err(Error::invalid("credential_id must be a string")),
    };
    let Some(Value::Array(items)) = obj.get("deployment_ids") else {
        return Err(Error::invalid("deployment_ids must be a non-empty array of deployment ids"));
    };
    let mut seen = BTreeSet::new();
    let mut deployment_ids = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str().map(str::trim) {
            Some(id) if !id.is_empty() => {
                if seen.insert(id.to_owned()) {
                    deployment_ids.push(id.to_owned());
                }
            }
            _ => return Err(Error::invalid("deployment_ids must be a non-empty array of deployment ids")),
        }
    }
    if deployment_ids.is_empty() {
        return Err(Error::invalid("deployment_ids must be a non-empty array of deployment ids"));
    }
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => return Err(Error::invalid("metadata must be an object or null")),
    };
    Ok(ConvertRequest { credential_id, name, provider, fingerprint, deployment_ids, metadata })
}

impl Gateway {
    async fn rebuild_after_write(&self, what: &str) -> Result<()> {
        self.rebuild_registry().await.map_err(|e| {
            tracing::error!(error = %e, "registry rebuild after {what} failed");
            Error::internal()
        })
    }

    /// `GET /named-credentials?provider` (by name, with `usage_count`).
    pub async fn list_credentials(&self, provider: Option<&str>) -> Result<CredentialList> {
        let filter = provider.map(str::trim).filter(|p| !p.is_empty()).map(deltallm_domain::provider::canonical);
        let counts = self.store().credential_usage_counts().await?;
        let data = self
            .store()
            .all_credentials()
            .await?
            .iter()
            .filter(|c| filter.as_ref().is_none_or(|p| &c.provider == p))
            .map(|c| view(c, counts.get(&c.credential_id).copied().unwrap_or(0), None))
            .collect();
        Ok(CredentialList { data })
    }

    /// `GET /named-credentials/{id}` with `usage_count` and `linked_deployments`.
    pub async fn get_credential(&self, id: &str) -> Result<CredentialView> {
        let c = self.store().get_credential(id).await?.ok_or_else(not_found)?;
        let usage = self.store().credential_usage(id).await?;
        let linked = self.store().linked_deployments(id, LINKED_LIMIT).await?;
        Ok(view(&c, usage, Some(linked)))
    }

    /// `POST /named-credentials` (CRED-1..3).
    pub async fn create_credential(&self, body: &Value) -> Result<CredentialView> {
        let input = CredentialInput::from_json(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let credential_id = input.credential_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.store().get_credential(&credential_id).await?.is_some() {
            return Err(Error::new(
                ApiErrorKind::Conflict,
                format!("A named credential with id '{credential_id}' already exists"),
            ));
        }
        let now = Utc::now();
        let c = NamedCredential {
            credential_id,
            name: input.name,
            provider: input.provider,
            connection_config: input.connection_config,
            metadata: input.metadata,
            created_by_account_id: None,
            created_at: now,
            updated_at: now,
        };
        self.store().insert_credential(&c).await?;
        let out = view(&c, 0, None);
        audit::record("create", "named_credential", &c.credential_id, &changed_fields(None, &c), &view_json(&out));
        Ok(out)
    }

    /// `PUT /named-credentials/{id}` (CRED-3). Linked deployments pick up the
    /// new values through a registry rebuild before this returns (CRED-9), so
    /// the very next request uses them.
    pub async fn update_credential(&self, id: &str, body: &Value) -> Result<CredentialView> {
        let patch = CredentialPatch::from_json(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let stored = self.store().get_credential(id).await?.ok_or_else(not_found)?;
        let mut next = patch.apply(&stored)?;
        next.updated_at = Utc::now();
        self.check_linked_still_valid(&next).await?;
        self.store().update_credential(&next).await?;
        let usage = self.store().credential_usage(id).await?;
        if usage > 0 {
            self.rebuild_after_write("a credential update").await?;
        }
        let out = view(&next, usage, None);
        audit::record("update", "named_credential", id, &changed_fields(Some(&stored), &next), &view_json(&out));
        Ok(out)
    }

    /// Every linked deployment must still pass the admin rules with the
    /// updated credential (VAL-3, VAL-5..7): removing the `api_base` that
    /// linked deployments rely on is refused instead of breaking them.
    async fn check_linked_still_valid(&self, next: &NamedCredential) -> Result<()> {
        let linked = self.store().deployments_linked_to(&next.credential_id).await?;
        let credential = next.as_link();
        for d in linked {
            let input = DeploymentInput {
                deployment_id: Some(d.deployment_id.clone()),
                model_name: d.model_name,
                named_credential_id: d.named_credential_id,
                deltallm_params: d.deltallm_params,
                model_info: d.model_info,
            };
            if let Err(e) = deployment::validate(input, Some(credential), WriteRules::ADMIN) {
                return Err(Error::invalid(format!(
                    "This update would break linked deployment '{}': {}",
                    d.deployment_id, e
                )));
            }
        }
        Ok(())
    }

    /// `DELETE /named-credentials/{id}` (CRED-9): 409 while linked, 404 unknown.
    pub async fn delete_credential(&self, id: &str) -> Result<()> {
        let _guard = self.inner.write_lock.lock().await;
        self.store().delete_credential(id).await?;
        audit::record("delete", "named_credential", id, &[], &Value::Null);
        Ok(())
    }

    /// `GET /named-credentials/inline-report` (CRED-11): unlinked deployments
    /// grouped by the fingerprint of their inline connection fields.
    pub async fn inline_report(&self) -> Result<InlineReport> {
        let mut groups: BTreeMap<String, InlineGroup> = BTreeMap::new();
        for d in self.store().all_deployments().await? {
            if d.named_credential_id.is_some() {
                continue;
            }
            let provider = deltallm_domain::provider::canonical(&d.provider());
            let Some((fingerprint, config)) = inline_fingerprint(&provider, &d.deltallm_params) else {
                continue;
            };
            let group = groups.entry(fingerprint.clone()).or_insert_with(|| InlineGroup {
                fingerprint,
                connection_summary: summary(&provider, &config),
                credentials_present: config.keys().any(|k| redaction::is_secret_key(k)),
                connection_config: redaction::redacted(&Value::Object(config)),
                provider,
                deployment_count: 0,
                deployments: Vec::new(),
            });
            group.deployment_count += 1;
            group.deployments.push(LinkedDeployment { deployment_id: d.deployment_id, model_name: d.model_name });
        }
        let mut data: Vec<InlineGroup> = groups.into_values().collect();
        data.sort_by(|a, b| {
            b.deployment_count.cmp(&a.deployment_count).then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        Ok(InlineReport { data })
    }

    /// `POST /named-credentials/convert-inline-group` (CRED-11): create the
    /// credential from the group's shared inline fields, strip and link every
    /// deployment, all in one transaction, then reload.
    pub async fn convert_inline_group(&self, body: &Value) -> Result<Conversion> {
        let req = convert_request(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let mut shared: Option<Map<String, Value>> = None;
        let mut relinked: Vec<(Deployment, DateTime<Utc>)> = Vec::with_capacity(req.deployment_ids.len());
        let now = Utc::now();
        let credential_id = req.credential_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.store().get_credential(&credential_id).await?.is_some() {
            return Err(Error::new(
                ApiErrorKind::Conflict,
                format!("A named credential with id '{credential_id}' already exists"),
            ));
        }
        if self.store().all_credentials().await?.iter().any(|c| c.name == req.name) {
            return Err(Error::new(
                ApiErrorKind::Conflict,
                format!("A named credential named '{}' already exists", req.name),
            ));
        }
        for id in &req.deployment_ids {
            let d = self
                .store()
                .get_deployment(id)
                .await?
                .ok_or_else(|| Error::invalid(format!("Deployment '{id}' does not exist")))?;
            if d.named_credential_id.is_some() {
                return Err(Error::invalid(format!("Deployment '{id}' is already linked to a named credential")));
            }
            if !credential::provider_matches(&d.provider(), &req.provider) {
                return Err(Error::invalid(format!("Deployment '{id}' does not use provider '{}'", req.provider)));
            }
            match inline_fingerprint(&req.provider, &d.deltallm_params) {
                Some((fp, config)) if fp == req.fingerprint => {
                    shared.get_or_insert(config);
                }
                _ => return Err(Error::invalid(format!("Deployment '{id}' does not match fingerprint"))),
            }
            let read_updated_at = d.updated_at;
            let mut linked = d;
            strip_connection_fields(&mut linked.deltallm_params);
            linked.named_credential_id = Some(credential_id.clone());
            linked.updated_at = now;
            relinked.push((linked, read_updated_at));
        }
        let config = validate_connection_config(&req.provider, &shared.unwrap_or_default())?;
        let c = NamedCredential {
            credential_id,
            name: req.name,
            provider: req.provider,
            connection_config: config,
            metadata: req.metadata,
            created_by_account_id: None,
            created_at: now,
            updated_at: now,
        };
        self.store().convert_inline_group(&c, &relinked).await?;
        self.rebuild_after_write("an inline conversion").await?;
        let out = Conversion { credential: view(&c, relinked.len() as u64, None), deployment_ids: req.deployment_ids };
        let mut fields = changed_fields(None, &c);
        fields.extend(out.deployment_ids.iter().map(|id| format!("deployments.{id}.named_credential_id")));
        audit::record(
            "convert_inline_group",
            "named_credential",
            &c.credential_id,
            &fields,
            &serde_json::to_value(&out).unwrap_or(Value::Null),
        );
        Ok(out)
    }
}
