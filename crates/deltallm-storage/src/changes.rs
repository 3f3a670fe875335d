//! A cheap fingerprint of everything the runtime registry is built from, so
//! replicas sharing one database notice each other's writes (CFG-6 poll).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{EntityTrait, QuerySelect};

use crate::entity::{
    deployment, named_credential, route_group as group_row, route_group_member as member_row,
    route_group_policy as policy_row,
};
use crate::{Result, Store};

type CountAndLatest = (i64, Option<DateTime<Utc>>);

impl Store {
    /// Row counts and newest change times of deployments, named credentials,
    /// route groups, members and policies. Any write (insert, update, delete,
    /// publish) changes it; equal fingerprints mean nothing to rebuild.
    pub async fn registry_fingerprint(&self) -> Result<String> {
        macro_rules! count_and_latest {
            ($entity:path, $pk:expr, $time:expr) => {
                <$entity>::find()
                    .select_only()
                    .column_as(Expr::expr(Func::count(Expr::col($pk))), "n")
                    .column_as(Expr::expr(Func::max(Expr::col($time))), "latest")
                    .into_tuple::<CountAndLatest>()
                    .one(&self.db)
                    .await?
                    .unwrap_or((0, None))
            };
        }
        let parts = [
            count_and_latest!(deployment::Entity, deployment::Column::DeploymentId, deployment::Column::UpdatedAt),
            count_and_latest!(
                named_credential::Entity,
                named_credential::Column::CredentialId,
                named_credential::Column::UpdatedAt
            ),
            count_and_latest!(group_row::Entity, group_row::Column::GroupKey, group_row::Column::UpdatedAt),
            count_and_latest!(member_row::Entity, member_row::Column::GroupKey, member_row::Column::UpdatedAt),
            count_and_latest!(policy_row::Entity, policy_row::Column::Id, policy_row::Column::PublishedAt),
            count_and_latest!(policy_row::Entity, policy_row::Column::Id, policy_row::Column::CreatedAt),
        ];
        Ok(parts
            .iter()
            .map(|(n, t)| format!("{n}@{}", t.map_or(0, |t| t.timestamp_micros())))
            .collect::<Vec<_>>()
            .join(";"))
    }
}
