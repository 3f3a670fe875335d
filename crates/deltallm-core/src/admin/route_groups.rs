//! Route-group administration (ADM-6) and versioned policies (ADM-7).
//! Every write that changes routing rebuilds the registry; drafts do not.

use chrono::Utc;
use deltallm_domain::ApiErrorKind;
use deltallm_domain::policy::{Policy, PolicyStatus, PolicyVersion, PoolMember, default_pool};
use deltallm_domain::route_group::{MemberInput, RouteGroup, RouteGroupInput, RouteGroupMember};
use deltallm_router::{HealthSnapshot, UnixMs};
use serde::Serialize;
use serde_json::Value;

use super::audit;
use crate::registry::{Registry, TargetKind};
use crate::{Error, Gateway, Result};

/// A route group as listed.
#[derive(Debug, Serialize)]
pub struct RouteGroupView {
    /// Stored fields.
    #[serde(flatten)]
    pub group: RouteGroup,
    /// Members (enabled or not).
    pub member_count: usize,
    /// Callable now: enabled with at least one routable member.
    pub live: bool,
    /// Strategy requests use (policy ?? group ?? global), when live.
    pub effective_strategy: Option<&'static str>,
    /// Published policy version in force.
    pub published_policy_version: Option<u32>,
}

/// A member with its deployment's facts and live health.
#[derive(Debug, Serialize)]
pub struct MemberView {
    /// Stored member fields.
    #[serde(flatten)]
    pub member: RouteGroupMember,
    /// The deployment's public name.
    pub model_name: Option<String>,
    /// The deployment's provider.
    pub provider: Option<String>,
    /// RUN-20 health (false when the deployment cannot be called).
    pub healthy: bool,
    /// Health detail.
    pub health: Option<HealthSnapshot>,
}

/// `GET /route-groups/{key}`.
#[derive(Debug, Serialize)]
pub struct RouteGroupDetail {
    /// Group and summary.
    #[serde(flatten)]
    pub view: RouteGroupView,
    /// Members in order.
    pub members: Vec<MemberView>,
    /// Published policy, if any.
    pub published_policy: Option<PolicyVersion>,
    /// Callable-target bindings (ADM-8) naming this group.
    pub bindings: Vec<Value>,
}

/// Result of `policy/validate` and `policy/simulate`.
#[derive(Debug, Serialize)]
pub struct PolicyCheck {
    /// Always true (invalid documents are 400s).
    pub valid: bool,
    /// The normalized document.
    pub policy: Value,
    /// Strategy the policy selects (else the group's or the global one).
    pub effective_strategy: String,
    /// Enabled members in routing order with their overrides.
    pub pool: Vec<PoolMember>,
}

/// One member of a simulation, with whether it is selectable right now.
#[derive(Debug, Serialize)]
pub struct SimulatedMember {
    /// Pool entry.
    #[serde(flatten)]
    pub member: PoolMember,
    /// Callable and not cooling down / marked unhealthy.
    pub available: bool,
}

/// Result of `policy/simulate`: the pool as requests would see it now.
#[derive(Debug, Serialize)]
pub struct PolicySimulation {
    /// The normalized document.
    pub policy: Value,
    /// Strategy the policy selects.
    pub effective_strategy: String,
    /// Pool with live availability.
    pub pool: Vec<SimulatedMember>,
    /// Members that are available.
    pub available_count: usize,
}

fn group_not_found() -> Error {
    Error::not_found("Route group not found")
}

/// `{"policy": {...}}` or the bare document.
fn policy_doc(body: &Value) -> &Value {
    match body.get("policy") {
        Some(p) if body.as_object().is_some_and(|o| o.len() == 1) => p,
        _ => body,
    }
}

fn view(group: RouteGroup, members: &[RouteGroupMember], registry: &Registry) -> RouteGroupView {
    let entry = registry.entries.get(group.group_key.as_str()).filter(|e| e.kind == TargetKind::RouteGroup);
    RouteGroupView {
        member_count: members.iter().filter(|m| m.group_key == group.group_key).count(),
        live: entry.is_some(),
        effective_strategy: entry.map(|e| e.routing.strategy.as_str()),
        published_policy_version: entry.and_then(|e| e.routing.policy_version),
        group,
    }
}

fn member_view(member: RouteGroupMember, registry: &Registry, now: UnixMs) -> MemberView {
    let resolved = registry.deployments.get(member.deployment_id.as_str());
    let health = resolved.map(|d| d.state.snapshot(now));
    MemberView {
        model_name: resolved.map(|d| d.record.model_name.clone()),
        provider: resolved.map(|d| d.provider.to_string()),
        healthy: resolved.is_some_and(|d| d.connection.is_some()) && health.as_ref().is_some_and(|h| h.healthy),
        health,
        member,
    }
}

impl Gateway {
    async fn require_group(&self, key: &str) -> Result<RouteGroup> {
        self.store().get_route_group(key).await?.ok_or_else(group_not_found)
    }

    async fn reload_after_group_write(&self) -> Result<()> {
        self.rebuild_registry().await.map_err(|e| {
            tracing::error!(error = %e, "registry rebuild after a route-group write failed");
            Error::internal()
        })
    }

    /// ADM-6 list.
    pub async fn list_route_groups(&self) -> Result<Vec<RouteGroupView>> {
        let snapshot = self.store().route_group_snapshot().await?;
        let registry = self.registry();
        Ok(snapshot.groups.into_iter().map(|g| view(g, &snapshot.members, &registry)).collect())
    }

    /// ADM-6 get: members with health, published policy, bindings.
    pub async fn get_route_group(&self, key: &str) -> Result<RouteGroupDetail> {
        let group = self.require_group(key).await?;
        let members = self.store().route_group_members(key).await?;
        let published =
            self.store().route_group_policies(key).await?.into_iter().find(|p| p.status == PolicyStatus::Published);
        let registry = self.registry();
        let now = UnixMs::now();
        Ok(RouteGroupDetail {
            view: view(group, &members, &registry),
            members: members.into_iter().map(|m| member_view(m, &registry, now)).collect(),
            published_policy: published,
            bindings: Vec::new(),
        })
    }

    /// ADM-6 create (optionally with members). Duplicate key or a key equal
    /// to a model name → 409; an unknown member deployment → 400.
    pub async fn create_route_group(&self, body: &Value) -> Result<RouteGroupDetail> {
        let input = RouteGroupInput::from_create(body, Utc::now())?;
        let _guard = self.inner.write_lock.lock().await;
        let key = input.group.group_key.clone();
        let model_named = self.registry().entries.get(key.as_str()).is_some_and(|e| e.kind == TargetKind::Model)
            || !self.store().deployments_named(&key).await?.is_empty();
        if model_named {
            return Err(Error::new(
                ApiErrorKind::Conflict,
                format!("Route group key '{key}' is already a model name; callable keys must be unique"),
            ));
        }
        for m in &input.members {
            self.require_member_deployment(&input.group, &m.deployment_id).await?;
        }
        let members: Vec<_> = input.members.into_iter().map(|m| m.merge(&key, None)).collect();
        self.store().insert_route_group(&input.group, &members).await?;
        tracing::info!(group_key = %key, members = members.len(), "route group created");
        audit::record("create", "route_group", &key, &sent_fields(body), body);
        self.reload_after_group_write().await?;
        drop(_guard);
        self.get_route_group(&key).await
    }

    /// ADM-6 update (omitted fields kept).
    pub async fn update_route_group(&self, key: &str, body: &Value) -> Result<RouteGroupDetail> {
        let _guard = self.inner.write_lock.lock().await;
        let stored = self.require_group(key).await?;
        let group = RouteGroupInput::apply_update(&stored, body, Utc::now())?;
        self.store().update_route_group(&group).await?;
        tracing::info!(group_key = %key, "route group updated");
        audit::record("update", "route_group", key, &sent_fields(body), body);
        self.reload_after_group_write().await?;
        drop(_guard);
        self.get_route_group(key).await
    }

    /// ADM-6 delete (members and policies go with it).
    pub async fn delete_route_group(&self, key: &str) -> Result<()> {
        let _guard = self.inner.write_lock.lock().await;
        if !self.store().delete_route_group(key).await? {
            return Err(group_not_found());
        }
        tracing::info!(group_key = %key, "route group deleted");
        audit::record("delete", "route_group", key, &[], &Value::Null);
        self.reload_after_group_write().await
    }

    /// A member must exist and serve the group's mode (the registry would
    /// otherwise skip it silently).
    async fn require_member_deployment(&self, group: &RouteGroup, id: &str) -> Result<()> {
        match self.store().get_deployment(id).await? {
            Some(d) if d.mode() != group.mode => Err(Error::invalid(format!(
                "Deployment '{id}' serves {} and cannot join route group '{}' (mode {})",
                d.mode(),
                group.group_key,
                group.mode
            ))),
            Some(_) => Ok(()),
            None => Err(Error::invalid(format!("Deployment '{id}' does not exist"))),
        }
    }

    /// ADM-6 members in order, with health.
    pub async fn list_route_group_members(&self, key: &str) -> Result<Vec<MemberView>> {
        self.require_group(key).await?;
        let registry = self.registry();
        let now = UnixMs::now();
        let members = self.store().route_group_members(key).await?;
        Ok(members.into_iter().map(|m| member_view(m, &registry, now)).collect())
    }

    /// ADM-6 member upsert: new members join at the end; existing ones keep
    /// their position and omitted fields.
    pub async fn upsert_route_group_member(&self, key: &str, body: &Value) -> Result<MemberView> {
        let input = MemberInput::from_json(body)?;
        let _guard = self.inner.write_lock.lock().await;
        let group = self.require_group(key).await?;
        self.require_member_deployment(&group, &input.deployment_id).await?;
        let existing = self.store().route_group_members(key).await?;
        let current = existing.iter().find(|m| m.deployment_id == input.deployment_id);
        let member = input.merge(key, current);
        self.store().upsert_route_group_member(&member).await.map_err(|e| match e {
            deltallm_storage::Error::NotFound(_) => {
                Error::invalid(format!("Deployment '{}' does not exist", member.deployment_id))
            }
            other => other.into(),
        })?;
        tracing::info!(group_key = %key, deployment_id = %member.deployment_id, "route group member saved");
        audit::record("upsert_member", "route_group", key, &sent_fields(body), body);
        self.reload_after_group_write().await?;
        Ok(member_view(member, &self.registry(), UnixMs::now()))
    }

    /// ADM-6 member removal.
    pub async fn delete_route_group_member(&self, key: &str, deployment_id: &str) -> Result<()> {
        let _guard = self.inner.write_lock.lock().await;
        self.require_group(key).await?;
        if !self.store().delete_route_group_member(key, deployment_id).await? {
            return Err(Error::not_found("Route group member not found"));
        }
        tracing::info!(group_key = %key, deployment_id = %deployment_id, "route group member removed");
        audit::record(
            "delete_member",
            "route_group",
            key,
            &["deployment_id".to_owned()],
            &serde_json::json!({"deployment_id": deployment_id}),
        );
        self.reload_after_group_write().await
    }

    /// ADM-7 `GET policy`: the published version.
    pub async fn get_route_group_policy(&self, key: &str) -> Result<PolicyVersion> {
        self.require_group(key).await?;
        let versions = self.store().route_group_policies(key).await?;
        versions
            .into_iter()
            .find(|p| p.status == PolicyStatus::Published)
            .ok_or_else(|| Error::not_found("Route group has no published policy"))
    }

    /// ADM-7 `GET policies`: every version, newest first.
    pub async fn list_route_group_policies(&self, key: &str) -> Result<Vec<PolicyVersion>> {
        self.require_group(key).await?;
        Ok(self.store().route_group_policies(key).await?)
    }

    async fn check_policy(&self, key: &str, doc: &Value) -> Result<(RouteGroup, Policy, Vec<RouteGroupMember>)> {
        let group = self.require_group(key).await?;
        let members = self.store().route_group_members(key).await?;
        let policy = Policy::validate(doc, &members)?;
        Ok((group, policy, members))
    }

    fn effective_strategy(&self, group: &RouteGroup, policy: &Policy) -> String {
        policy
            .strategy_name()
            .or(group.routing_strategy.as_deref())
            .unwrap_or(&self.settings().router.routing_strategy)
            .to_owned()
    }

    /// ADM-7 `policy/validate`.
    pub async fn validate_route_group_policy(&self, key: &str, body: &Value) -> Result<PolicyCheck> {
        let (group, policy, members) = self.check_policy(key, policy_doc(body)).await?;
        Ok(PolicyCheck {
            valid: true,
            policy: policy.to_json(),
            effective_strategy: self.effective_strategy(&group, &policy),
            pool: policy.pool(&members),
        })
    }

    /// ADM-7 `policy/draft`: save the group's one draft.
    pub async fn save_route_group_policy_draft(&self, key: &str, body: &Value) -> Result<PolicyVersion> {
        let _guard = self.inner.write_lock.lock().await;
        let (_, policy, _) = self.check_policy(key, policy_doc(body)).await?;
        let saved = self.store().save_policy_draft(key, &policy.to_json()).await?;
        tracing::info!(group_key = %key, version = saved.version, "route group policy draft saved");
        audit::record("save_policy_draft", "route_group", key, &["policy".to_owned()], &saved.policy);
        Ok(saved)
    }

    /// ADM-7 `policy/publish`: a body with `policy` publishes that document
    /// as a new version; an empty body publishes the draft (re-validated).
    pub async fn publish_route_group_policy(&self, key: &str, body: &Value) -> Result<PolicyVersion> {
        let explicit = match body {
            Value::Null => None,
            Value::Object(o) if o.is_empty() => None,
            Value::Object(o) if o.contains_key("policy") => o.get("policy"),
            _ => return Err(Error::invalid("send {\"policy\": {...}} or an empty body to publish the draft")),
        };
        let _guard = self.inner.write_lock.lock().await;
        let published = match explicit {
            Some(doc) => {
                let (_, policy, _) = self.check_policy(key, doc).await?;
                self.store().publish_policy(key, Some(&policy.to_json())).await?
            }
            None => {
                let draft = self
                    .list_route_group_policies(key)
                    .await?
                    .into_iter()
                    .find(|p| p.status == PolicyStatus::Draft)
                    .ok_or_else(|| Error::not_found("Route group has no draft policy to publish"))?;
                self.check_policy(key, &draft.policy).await?;
                self.store().publish_policy(key, None).await?
            }
        };
        tracing::info!(group_key = %key, version = published.version, "route group policy published");
        audit::record("publish_policy", "route_group", key, &["policy".to_owned()], &published.policy);
        self.reload_after_group_write().await?;
        Ok(published)
    }

    /// ADM-7 `PUT policy`: validate and publish in one step.
    pub async fn put_route_group_policy(&self, key: &str, body: &Value) -> Result<PolicyVersion> {
        let doc = policy_doc(body).clone();
        self.publish_route_group_policy(key, &serde_json::json!({ "policy": doc })).await
    }

    /// ADM-7 `policy/rollback` `{"version": n}`: republish version n's
    /// document as a new version.
    pub async fn rollback_route_group_policy(&self, key: &str, body: &Value) -> Result<PolicyVersion> {
        let version = body
            .get("version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Error::invalid("version is required (a positive integer)"))?;
        let _guard = self.inner.write_lock.lock().await;
        self.require_group(key).await?;
        let target = self
            .store()
            .route_group_policy(key, version)
            .await?
            .ok_or_else(|| Error::not_found(format!("Policy version {version} not found")))?;
        if target.status == PolicyStatus::Draft {
            return Err(Error::invalid(format!("Policy version {version} is a draft; publish it instead")));
        }
        let (_, policy, _) = self.check_policy(key, &target.policy).await?;
        let published = self.store().publish_policy(key, Some(&policy.to_json())).await?;
        tracing::info!(group_key = %key, from = version, version = published.version, "route group policy rolled back");
        audit::record("rollback_policy", "route_group", key, &["policy".to_owned()], &published.policy);
        self.reload_after_group_write().await?;
        Ok(published)
    }

    /// ADM-7 `policy/simulate`: the pool a document (or the published policy,
    /// for an empty body) yields, with each member's availability now.
    pub async fn simulate_route_group_policy(&self, key: &str, body: &Value) -> Result<PolicySimulation> {
        let group = self.require_group(key).await?;
        let members = self.store().route_group_members(key).await?;
        let empty = matches!(body, Value::Null) || body.as_object().is_some_and(|o| o.is_empty());
        let (policy, pool) = if empty {
            match self.get_route_group_policy(key).await {
                Ok(p) => {
                    let policy = Policy::validate(&p.policy, &members)?;
                    let pool = policy.pool(&members);
                    (policy, pool)
                }
                Err(_) => (Policy::parse(&Value::Object(Default::default()))?, default_pool(&members)),
            }
        } else {
            let policy = Policy::validate(policy_doc(body), &members)?;
            let pool = policy.pool(&members);
            (policy, pool)
        };
        let registry = self.registry();
        let now = UnixMs::now();
        let pool: Vec<_> = pool
            .into_iter()
            .map(|m| {
                let available = registry
                    .deployments
                    .get(m.deployment_id.as_str())
                    .is_some_and(|d| d.connection.is_some() && d.mode == group.mode && d.state.is_available(now));
                SimulatedMember { member: m, available }
            })
            .collect();
        Ok(PolicySimulation {
            policy: policy.to_json(),
            effective_strategy: self.effective_strategy(&group, &policy),
            available_count: pool.iter().filter(|m| m.available).count(),
            pool,
        })
    }
}

/// The top-level fields a write sent, for the audit event's changed fields.
fn sent_fields(body: &Value) -> Vec<String> {
    body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}
