//! Route groups (ADM-6), their members and versioned policies (ADM-7).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RouteGroups {
    Table,
    GroupKey,
    Name,
    Mode,
    RoutingStrategy,
    Enabled,
    Metadata,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RouteGroupMembers {
    Table,
    GroupKey,
    DeploymentId,
    Enabled,
    Weight,
    Priority,
    Position,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RouteGroupPolicies {
    Table,
    Id,
    GroupKey,
    Version,
    Status,
    Policy,
    CreatedAt,
    PublishedAt,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    DeploymentId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RouteGroups::Table)
                    .if_not_exists()
                    .col(string(RouteGroups::GroupKey).primary_key())
                    .col(string(RouteGroups::Name))
                    .col(string(RouteGroups::Mode))
                    .col(string_null(RouteGroups::RoutingStrategy))
                    .col(boolean(RouteGroups::Enabled))
                    .col(text(RouteGroups::Metadata))
                    .col(timestamp_with_time_zone(RouteGroups::CreatedAt))
                    .col(timestamp_with_time_zone(RouteGroups::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RouteGroupMembers::Table)
                    .if_not_exists()
                    .col(string(RouteGroupMembers::GroupKey))
                    .col(string(RouteGroupMembers::DeploymentId))
                    .col(boolean(RouteGroupMembers::Enabled))
                    .col(integer_null(RouteGroupMembers::Weight))
                    .col(integer_null(RouteGroupMembers::Priority))
                    .col(big_integer(RouteGroupMembers::Position))
                    .col(timestamp_with_time_zone(RouteGroupMembers::CreatedAt))
                    .col(timestamp_with_time_zone(RouteGroupMembers::UpdatedAt))
                    .primary_key(Index::create().col(RouteGroupMembers::GroupKey).col(RouteGroupMembers::DeploymentId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_route_group_members_group")
                            .from(RouteGroupMembers::Table, RouteGroupMembers::GroupKey)
                            .to(RouteGroups::Table, RouteGroups::GroupKey)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_route_group_members_deployment")
                            .from(RouteGroupMembers::Table, RouteGroupMembers::DeploymentId)
                            .to(Deployments::Table, Deployments::DeploymentId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_route_group_members_deployment_id")
                    .table(RouteGroupMembers::Table)
                    .col(RouteGroupMembers::DeploymentId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RouteGroupPolicies::Table)
                    .if_not_exists()
                    .col(big_integer(RouteGroupPolicies::Id).primary_key().auto_increment())
                    .col(string(RouteGroupPolicies::GroupKey))
                    .col(integer(RouteGroupPolicies::Version))
                    .col(string(RouteGroupPolicies::Status))
                    .col(text(RouteGroupPolicies::Policy))
                    .col(timestamp_with_time_zone(RouteGroupPolicies::CreatedAt))
                    .col(timestamp_with_time_zone_null(RouteGroupPolicies::PublishedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_route_group_policies_group")
                            .from(RouteGroupPolicies::Table, RouteGroupPolicies::GroupKey)
                            .to(RouteGroups::Table, RouteGroups::GroupKey)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .unique()
                    .name("idx_route_group_policies_group_version")
                    .table(RouteGroupPolicies::Table)
                    .col(RouteGroupPolicies::GroupKey)
                    .col(RouteGroupPolicies::Version)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            RouteGroupPolicies::Table.into_iden(),
            RouteGroupMembers::Table.into_iden(),
            RouteGroups::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
