//! Deployments, named credentials and spend logs.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum NamedCredentials {
    Table,
    CredentialId,
    Name,
    Provider,
    ConnectionConfig,
    SecretCiphertext,
    SecretKeyId,
    Metadata,
    CreatedByAccountId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    DeploymentId,
    ModelName,
    Provider,
    Mode,
    NamedCredentialId,
    DeltallmParams,
    ModelInfo,
    SecretCiphertext,
    SecretKeyId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SpendLogs {
    Table,
    Id,
    RequestId,
    CallType,
    Model,
    DeploymentId,
    DeploymentModel,
    Provider,
    ApiBase,
    Spend,
    ProviderCost,
    BillingUnit,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    PromptTokensCached,
    Images,
    Characters,
    AudioSeconds,
    UnpricedReason,
    RequestTags,
    Metadata,
    Status,
    HttpStatusCode,
    ErrorType,
    Stream,
    LatencyMs,
    StartTime,
    EndTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(NamedCredentials::Table)
                    .if_not_exists()
                    .col(string(NamedCredentials::CredentialId).primary_key())
                    .col(string_uniq(NamedCredentials::Name))
                    .col(string(NamedCredentials::Provider))
                    .col(text(NamedCredentials::ConnectionConfig))
                    .col(text_null(NamedCredentials::SecretCiphertext))
                    .col(string_null(NamedCredentials::SecretKeyId))
                    .col(text_null(NamedCredentials::Metadata))
                    .col(string_null(NamedCredentials::CreatedByAccountId))
                    .col(timestamp_with_time_zone(NamedCredentials::CreatedAt))
                    .col(timestamp_with_time_zone(NamedCredentials::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deployments::Table)
                    .if_not_exists()
                    .col(string(Deployments::DeploymentId).primary_key())
                    .col(string(Deployments::ModelName))
                    .col(string(Deployments::Provider))
                    .col(string(Deployments::Mode))
                    .col(string_null(Deployments::NamedCredentialId))
                    .col(text(Deployments::DeltallmParams))
                    .col(text(Deployments::ModelInfo))
                    .col(text_null(Deployments::SecretCiphertext))
                    .col(string_null(Deployments::SecretKeyId))
                    .col(timestamp_with_time_zone(Deployments::CreatedAt))
                    .col(timestamp_with_time_zone(Deployments::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deployments_named_credential")
                            .from(Deployments::Table, Deployments::NamedCredentialId)
                            .to(NamedCredentials::Table, NamedCredentials::CredentialId)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_deployments_model_name", Deployments::ModelName),
            ("idx_deployments_named_credential_id", Deployments::NamedCredentialId),
        ] {
            manager
                .create_index(Index::create().if_not_exists().name(name).table(Deployments::Table).col(col).to_owned())
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(SpendLogs::Table)
                    .if_not_exists()
                    .col(big_integer(SpendLogs::Id).primary_key().auto_increment())
                    .col(string(SpendLogs::RequestId))
                    .col(string(SpendLogs::CallType))
                    .col(string(SpendLogs::Model))
                    .col(string_null(SpendLogs::DeploymentId))
                    .col(string_null(SpendLogs::DeploymentModel))
                    .col(string(SpendLogs::Provider))
                    .col(string_null(SpendLogs::ApiBase))
                    .col(double(SpendLogs::Spend))
                    .col(double(SpendLogs::ProviderCost))
                    .col(string(SpendLogs::BillingUnit))
                    .col(big_integer(SpendLogs::PromptTokens))
                    .col(big_integer(SpendLogs::CompletionTokens))
                    .col(big_integer(SpendLogs::TotalTokens))
                    .col(big_integer(SpendLogs::PromptTokensCached))
                    .col(big_integer(SpendLogs::Images))
                    .col(big_integer(SpendLogs::Characters))
                    .col(double(SpendLogs::AudioSeconds))
                    .col(string_null(SpendLogs::UnpricedReason))
                    .col(text(SpendLogs::RequestTags))
                    .col(text(SpendLogs::Metadata))
                    .col(string(SpendLogs::Status))
                    .col(integer(SpendLogs::HttpStatusCode))
                    .col(string_null(SpendLogs::ErrorType))
                    .col(boolean(SpendLogs::Stream))
                    .col(big_integer(SpendLogs::LatencyMs))
                    .col(timestamp_with_time_zone(SpendLogs::StartTime))
                    .col(timestamp_with_time_zone(SpendLogs::EndTime))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_spend_logs_start_time", SpendLogs::StartTime),
            ("idx_spend_logs_model", SpendLogs::Model),
            ("idx_spend_logs_provider", SpendLogs::Provider),
        ] {
            manager
                .create_index(Index::create().if_not_exists().name(name).table(SpendLogs::Table).col(col).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [SpendLogs::Table.into_iden(), Deployments::Table.into_iden(), NamedCredentials::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
