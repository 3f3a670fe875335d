//! Spend records (SPEND-3) and per-model/provider/deployment totals.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, Func};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;

use crate::entity::spend_log as row;
use crate::{Result, Store};

/// One request's spend event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpendRecord {
    /// Gateway request id.
    pub request_id: String,
    /// `chat_completion`, `embedding`, ...
    pub call_type: String,
    /// Public model (what the client asked for).
    pub model: String,
    /// Served deployment.
    pub deployment_id: Option<String>,
    /// Upstream model id of the served deployment.
    pub deployment_model: Option<String>,
    /// Provider attribution (SPEND-4).
    pub provider: String,
    /// Upstream base URL.
    pub api_base: Option<String>,
    /// Cost charged (USD).
    pub spend: f64,
    /// Provider cost (USD, sync prices).
    pub provider_cost: f64,
    /// token, image, character, second.
    pub billing_unit: String,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Total tokens.
    pub total_tokens: i64,
    /// Cached prompt tokens.
    pub prompt_tokens_cached: i64,
    /// Images generated.
    pub images: i64,
    /// Characters synthesized.
    pub characters: i64,
    /// Audio seconds.
    pub audio_seconds: f64,
    /// Why the cost is 0 when unpriced.
    pub unpriced_reason: Option<String>,
    /// `metadata.tags` of the request (JSON array text).
    pub request_tags: String,
    /// Route decision and other metadata (JSON object text).
    pub metadata: String,
    /// `success` or `failure`.
    pub status: String,
    /// HTTP status returned to the client.
    pub http_status_code: i32,
    /// Error class on failure.
    pub error_type: Option<String>,
    /// Streaming request.
    pub stream: bool,
    /// Total latency.
    pub latency_ms: i64,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
}

/// Grouping of the spend summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendGroupBy {
    /// By public model.
    Model,
    /// By provider.
    Provider,
    /// By served deployment.
    Deployment,
}

/// One row of the spend summary.
#[derive(Debug, Clone, PartialEq, Serialize, FromQueryResult)]
pub struct SpendSummaryRow {
    /// The group value.
    pub key: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Total spend (USD).
    pub spend: f64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Total tokens.
    pub total_tokens: i64,
}

/// SUM over a BIGINT column; PostgreSQL widens it to NUMERIC, so cast back.
fn int_sum(col: row::Column) -> Expr {
    Func::cast_as(Func::sum(Expr::col(col)), Alias::new("BIGINT")).into()
}

impl Store {
    /// Write a batch of spend records in one statement.
    pub async fn insert_spend(&self, records: &[SpendRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let models = records.iter().map(|r| row::ActiveModel {
            id: sea_orm::ActiveValue::NotSet,
            request_id: Set(r.request_id.clone()),
            call_type: Set(r.call_type.clone()),
            model: Set(r.model.clone()),
            deployment_id: Set(r.deployment_id.clone()),
            deployment_model: Set(r.deployment_model.clone()),
            provider: Set(r.provider.clone()),
            api_base: Set(r.api_base.clone()),
            spend: Set(r.spend),
            provider_cost: Set(r.provider_cost),
            billing_unit: Set(r.billing_unit.clone()),
            prompt_tokens: Set(r.prompt_tokens),
            completion_tokens: Set(r.completion_tokens),
            total_tokens: Set(r.total_tokens),
            prompt_tokens_cached: Set(r.prompt_tokens_cached),
            images: Set(r.images),
            characters: Set(r.characters),
            audio_seconds: Set(r.audio_seconds),
            unpriced_reason: Set(r.unpriced_reason.clone()),
            request_tags: Set(r.request_tags.clone()),
            metadata: Set(r.metadata.clone()),
            status: Set(r.status.clone()),
            http_status_code: Set(r.http_status_code),
            error_type: Set(r.error_type.clone()),
            stream: Set(r.stream),
            latency_ms: Set(r.latency_ms),
            start_time: Set(r.start_time),
            end_time: Set(r.end_time),
        });
        // No RETURNING: the ids are not needed, and on SQLite fetching them
        // streams one row per record back from the database thread.
        row::Entity::insert_many(models).exec_without_returning(&self.db).await?;
        Ok(())
    }

    /// Totals grouped by model, provider or deployment within `[from, to)`.
    pub async fn spend_summary(
        &self,
        group_by: SpendGroupBy,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<SpendSummaryRow>> {
        let col = match group_by {
            SpendGroupBy::Model => row::Column::Model,
            SpendGroupBy::Provider => row::Column::Provider,
            SpendGroupBy::Deployment => row::Column::DeploymentId,
        };
        let mut q = row::Entity::find().select_only().column_as(col, "key");
        q = q
            .column_as(Expr::from(Func::count(Expr::col(row::Column::Id))), "requests")
            .column_as(Expr::from(Func::sum(Expr::col(row::Column::Spend))), "spend")
            .column_as(int_sum(row::Column::PromptTokens), "prompt_tokens")
            .column_as(int_sum(row::Column::CompletionTokens), "completion_tokens")
            .column_as(int_sum(row::Column::TotalTokens), "total_tokens");
        if let Some(from) = from {
            q = q.filter(row::Column::StartTime.gte(from));
        }
        if let Some(to) = to {
            q = q.filter(row::Column::StartTime.lt(to));
        }
        let rows = q.group_by(col).order_by_asc(col).into_model::<SpendSummaryRow>().all(&self.db).await?;
        Ok(rows)
    }

    /// Recent spend records, newest first (tests and the admin view).
    pub async fn recent_spend(&self, limit: u64) -> Result<Vec<row::Model>> {
        Ok(row::Entity::find().order_by_desc(row::Column::Id).limit(limit).all(&self.db).await?)
    }
}
