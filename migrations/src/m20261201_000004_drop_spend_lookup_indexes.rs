//! `spend_logs` is written once per request and read by rare admin summaries.
//! The model and provider indexes cost two extra b-tree inserts per request
//! (about 4 % of the gateway's CPU per request under load) and do not
//! help those summaries, which filter on `start_time` (still indexed) and
//! group in one pass.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SpendLogs {
    Table,
    Model,
    Provider,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["idx_spend_logs_model", "idx_spend_logs_provider"] {
            manager.drop_index(Index::drop().if_exists().name(name).table(SpendLogs::Table).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, col) in
            [("idx_spend_logs_model", SpendLogs::Model), ("idx_spend_logs_provider", SpendLogs::Provider)]
        {
            manager
                .create_index(Index::create().if_not_exists().name(name).table(SpendLogs::Table).col(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
