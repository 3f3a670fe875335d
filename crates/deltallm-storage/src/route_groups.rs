//! Route groups, members and policy versions (ADM-6, ADM-7).
//!
//! Writes that touch several rows (a group with its members, a publish that
//! archives the previous version) run in one transaction. Version numbers are
//! `max + 1` per group; a unique index on `(group_key, version)` turns a race
//! between replicas into a conflict instead of a duplicate.

use chrono::{DateTime, Utc};
use deltallm_domain::deployment::Mode;
use deltallm_domain::policy::{PolicyStatus, PolicyVersion};
use deltallm_domain::route_group::{RouteGroup, RouteGroupMember};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;

use crate::entity::{route_group as group_row, route_group_member as member_row, route_group_policy as policy_row};
use crate::error::{is_fk_violation, is_unique_violation, parse_object};
use crate::{Error, Result, Store};

/// Everything a registry build needs about route groups.
#[derive(Debug, Clone, Default)]
pub struct RouteGroupSnapshot {
    /// All groups, by key.
    pub groups: Vec<RouteGroup>,
    /// All members, by group then position.
    pub members: Vec<RouteGroupMember>,
    /// The published policy of each group that has one.
    pub published: Vec<PolicyVersion>,
}

fn group_from_row(r: group_row::Model) -> Result<RouteGroup> {
    let mode = Mode::parse(&r.mode).map_err(|e| Error::Corrupt(r.group_key.clone(), e.to_string()))?;
    Ok(RouteGroup {
        metadata: parse_object(&r.group_key, &r.metadata)?,
        group_key: r.group_key,
        name: r.name,
        mode,
        routing_strategy: r.routing_strategy,
        enabled: r.enabled,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

fn group_to_row(g: &RouteGroup) -> group_row::ActiveModel {
    group_row::ActiveModel {
        group_key: Set(g.group_key.clone()),
        name: Set(g.name.clone()),
        mode: Set(g.mode.as_str().to_owned()),
        routing_strategy: Set(g.routing_strategy.clone()),
        enabled: Set(g.enabled),
        metadata: Set(Value::Object(g.metadata.clone()).to_string()),
        created_at: Set(g.created_at),
        updated_at: Set(g.updated_at),
    }
}

fn member_from_row(r: member_row::Model) -> RouteGroupMember {
    let non_negative = |v: Option<i32>| v.and_then(|n| u32::try_from(n).ok());
    RouteGroupMember {
        group_key: r.group_key,
        deployment_id: r.deployment_id,
        enabled: r.enabled,
        weight: non_negative(r.weight),
        priority: non_negative(r.priority),
    }
}

fn to_i32(v: Option<u32>) -> Option<i32> {
    v.map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

fn policy_from_row(r: policy_row::Model) -> Result<PolicyVersion> {
    let id = format!("{}#{}", r.group_key, r.version);
    let status = PolicyStatus::parse(&r.status).ok_or_else(|| Error::Corrupt(id.clone(), "unknown status".into()))?;
    let policy = serde_json::from_str(&r.policy).map_err(|e| Error::Corrupt(id, e.to_string()))?;
    Ok(PolicyVersion {
        group_key: r.group_key,
        version: u32::try_from(r.version).unwrap_or(0),
        status,
        policy,
        created_at: r.created_at,
        published_at: r.published_at,
    })
}

fn unknown_deployment(e: &sea_orm::DbErr) -> Option<Error> {
    is_fk_violation(e).then(|| Error::NotFound("A member deployment does not exist".into()))
}

async fn next_position(db: &impl ConnectionTrait, key: &str) -> Result<i64> {
    let max: Option<Option<i64>> = member_row::Entity::find()
        .select_only()
        .column_as(member_row::Column::Position.max(), "max")
        .filter(member_row::Column::GroupKey.eq(key))
        .into_tuple()
        .one(db)
        .await?;
    Ok(max.flatten().map_or(0, |m| m + 1))
}

async fn next_version(db: &impl ConnectionTrait, key: &str) -> Result<i32> {
    let max: Option<Option<i32>> = policy_row::Entity::find()
        .select_only()
        .column_as(policy_row::Column::Version.max(), "max")
        .filter(policy_row::Column::GroupKey.eq(key))
        .into_tuple()
        .one(db)
        .await?;
    Ok(max.flatten().unwrap_or(0) + 1)
}

fn member_to_row(m: &RouteGroupMember, position: i64, now: DateTime<Utc>) -> member_row::ActiveModel {
    member_row::ActiveModel {
        group_key: Set(m.group_key.clone()),
        deployment_id: Set(m.deployment_id.clone()),
        enabled: Set(m.enabled),
        weight: Set(to_i32(m.weight)),
        priority: Set(to_i32(m.priority)),
        position: Set(position),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

fn version_conflict(key: &str) -> Error {
    Error::Conflict(format!("Another policy write for route group '{key}' happened at the same time; retry"))
}

impl Store {
    /// Groups, members and published policies for a registry build.
    pub async fn route_group_snapshot(&self) -> Result<RouteGroupSnapshot> {
        let groups = self.all_route_groups().await?;
        let members = member_row::Entity::find()
            .order_by_asc(member_row::Column::GroupKey)
            .order_by_asc(member_row::Column::Position)
            .all(&self.db)
            .await?
            .into_iter()
            .map(member_from_row)
            .collect();
        let published = policy_row::Entity::find()
            .filter(policy_row::Column::Status.eq(PolicyStatus::Published.as_str()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(policy_from_row)
            .collect::<Result<_>>()?;
        Ok(RouteGroupSnapshot { groups, members, published })
    }

    /// Every route group, by key.
    pub async fn all_route_groups(&self) -> Result<Vec<RouteGroup>> {
        let rows = group_row::Entity::find().order_by_asc(group_row::Column::GroupKey).all(&self.db).await?;
        rows.into_iter().map(group_from_row).collect()
    }

    /// One route group.
    pub async fn get_route_group(&self, key: &str) -> Result<Option<RouteGroup>> {
        group_row::Entity::find_by_id(key.to_owned()).one(&self.db).await?.map(group_from_row).transpose()
    }

    /// Insert a group and its initial members in one transaction; a taken
    /// key is a conflict, an unknown member deployment `NotFound`.
    pub async fn insert_route_group(&self, g: &RouteGroup, members: &[RouteGroupMember]) -> Result<()> {
        let txn = self.begin_write().await?;
        match group_row::Entity::insert(group_to_row(g)).exec(&txn).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict(format!("Route group '{}' already exists", g.group_key)));
            }
            Err(e) => return Err(e.into()),
        }
        for (i, m) in members.iter().enumerate() {
            let position = i64::try_from(i).unwrap_or(i64::MAX);
            if let Err(e) = member_row::Entity::insert(member_to_row(m, position, g.created_at)).exec(&txn).await {
                return Err(unknown_deployment(&e).unwrap_or_else(|| e.into()));
            }
        }
        txn.commit().await.map_err(|e| unknown_deployment(&e).unwrap_or_else(|| e.into()))
    }

    /// Replace a stored group's fields (same key).
    pub async fn update_route_group(&self, g: &RouteGroup) -> Result<()> {
        match group_row::Entity::update(group_to_row(g)).exec(&self.db).await {
            Ok(_) => Ok(()),
            Err(sea_orm::DbErr::RecordNotUpdated) => Err(Error::NotFound("Route group not found".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a group with its members and policies; false when unknown.
    pub async fn delete_route_group(&self, key: &str) -> Result<bool> {
        let txn = self.begin_write().await?;
        // Explicit deletes rather than relying on ON DELETE CASCADE alone, so the
        // outcome does not depend on SQLite's per-connection foreign-key switch.
        member_row::Entity::delete_many().filter(member_row::Column::GroupKey.eq(key)).exec(&txn).await?;
        policy_row::Entity::delete_many().filter(policy_row::Column::GroupKey.eq(key)).exec(&txn).await?;
        let res = group_row::Entity::delete_by_id(key.to_owned()).exec(&txn).await?;
        txn.commit().await?;
        Ok(res.rows_affected > 0)
    }

    /// Members of one group in order.
    pub async fn route_group_members(&self, key: &str) -> Result<Vec<RouteGroupMember>> {
        let rows = member_row::Entity::find()
            .filter(member_row::Column::GroupKey.eq(key))
            .order_by_asc(member_row::Column::Position)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(member_from_row).collect())
    }

    /// Insert a member at the end of the group, or update it in place.
    pub async fn upsert_route_group_member(&self, m: &RouteGroupMember) -> Result<()> {
        let now = Utc::now();
        let existing =
            member_row::Entity::find_by_id((m.group_key.clone(), m.deployment_id.clone())).one(&self.db).await?;
        let res = match existing {
            Some(row) => {
                let mut am = member_to_row(m, row.position, row.created_at);
                am.updated_at = Set(now);
                member_row::Entity::update(am).exec(&self.db).await.map(|_| ())
            }
            None => {
                let position = next_position(&self.db, &m.group_key).await?;
                member_row::Entity::insert(member_to_row(m, position, now)).exec(&self.db).await.map(|_| ())
            }
        };
        res.map_err(|e| unknown_deployment(&e).unwrap_or_else(|| e.into()))
    }

    /// Remove a member; false when it was not one.
    pub async fn delete_route_group_member(&self, key: &str, deployment_id: &str) -> Result<bool> {
        let res = member_row::Entity::delete_by_id((key.to_owned(), deployment_id.to_owned())).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }

    /// Every policy version of a group, newest first.
    pub async fn route_group_policies(&self, key: &str) -> Result<Vec<PolicyVersion>> {
        let rows = policy_row::Entity::find()
            .filter(policy_row::Column::GroupKey.eq(key))
            .order_by_desc(policy_row::Column::Version)
            .all(&self.db)
            .await?;
        rows.into_iter().map(policy_from_row).collect()
    }

    /// One policy version.
    pub async fn route_group_policy(&self, key: &str, version: u32) -> Result<Option<PolicyVersion>> {
        let row = policy_row::Entity::find()
            .filter(policy_row::Column::GroupKey.eq(key))
            .filter(policy_row::Column::Version.eq(i32::try_from(version).unwrap_or(i32::MAX)))
            .one(&self.db)
            .await?;
        row.map(policy_from_row).transpose()
    }

    /// Save the group's one draft: replace the existing draft's document, or
    /// add a draft as version `max + 1`.
    pub async fn save_policy_draft(&self, key: &str, policy: &Value) -> Result<PolicyVersion> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        let draft = policy_row::Entity::find()
            .filter(policy_row::Column::GroupKey.eq(key))
            .filter(policy_row::Column::Status.eq(PolicyStatus::Draft.as_str()))
            .one(&txn)
            .await?;
        let row = match draft {
            Some(row) => {
                let mut am: policy_row::ActiveModel = row.into();
                am.policy = Set(policy.to_string());
                am.created_at = Set(now);
                policy_row::Entity::update(am).exec(&txn).await?
            }
            None => {
                let am = policy_row::ActiveModel {
                    id: sea_orm::ActiveValue::NotSet,
                    group_key: Set(key.to_owned()),
                    version: Set(next_version(&txn, key).await?),
                    status: Set(PolicyStatus::Draft.as_str().to_owned()),
                    policy: Set(policy.to_string()),
                    created_at: Set(now),
                    published_at: Set(None),
                };
                match policy_row::Entity::insert(am).exec_with_returning(&txn).await {
                    Ok(row) => row,
                    Err(e) if is_unique_violation(&e) => return Err(version_conflict(key)),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        txn.commit().await?;
        policy_from_row(row)
    }

    /// Publish in one transaction: the previous published version becomes
    /// archived, then `policy` is published as version `max + 1`, or (with
    /// `None`) the draft is published under its own version. No draft →
    /// `NotFound`.
    pub async fn publish_policy(&self, key: &str, policy: Option<&Value>) -> Result<PolicyVersion> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        let draft = match policy {
            Some(_) => None,
            None => Some(
                policy_row::Entity::find()
                    .filter(policy_row::Column::GroupKey.eq(key))
                    .filter(policy_row::Column::Status.eq(PolicyStatus::Draft.as_str()))
                    .one(&txn)
                    .await?
                    .ok_or_else(|| Error::NotFound("Route group has no draft policy to publish".into()))?,
            ),
        };
        policy_row::Entity::update_many()
            .col_expr(policy_row::Column::Status, Expr::value(PolicyStatus::Archived.as_str()))
            .filter(policy_row::Column::GroupKey.eq(key))
            .filter(policy_row::Column::Status.eq(PolicyStatus::Published.as_str()))
            .exec(&txn)
            .await?;
        let row = match (draft, policy) {
            (Some(row), _) => {
                let mut am: policy_row::ActiveModel = row.into();
                am.status = Set(PolicyStatus::Published.as_str().to_owned());
                am.published_at = Set(Some(now));
                policy_row::Entity::update(am).exec(&txn).await?
            }
            (None, Some(doc)) => {
                let am = policy_row::ActiveModel {
                    id: sea_orm::ActiveValue::NotSet,
                    group_key: Set(key.to_owned()),
                    version: Set(next_version(&txn, key).await?),
                    status: Set(PolicyStatus::Published.as_str().to_owned()),
                    policy: Set(doc.to_string()),
                    created_at: Set(now),
                    published_at: Set(Some(now)),
                };
                match policy_row::Entity::insert(am).exec_with_returning(&txn).await {
                    Ok(row) => row,
                    Err(e) if is_unique_violation(&e) => return Err(version_conflict(key)),
                    Err(e) => return Err(e.into()),
                }
            }
            (None, None) => return Err(Error::NotFound("Route group has no draft policy to publish".into())),
        };
        match txn.commit().await {
            Ok(()) => policy_from_row(row),
            Err(e) if is_unique_violation(&e) => Err(version_conflict(key)),
            Err(e) => Err(e.into()),
        }
    }
}
