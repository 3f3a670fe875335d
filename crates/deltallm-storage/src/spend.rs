//! Spend records (SPEND-3) and per-model/provider/deployment totals.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, Func};
use std::sync::OnceLock;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    Statement, Value,
};
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

/// Columns written by [`Store::insert_spend`], in bind order.
const SPEND_COLUMNS: [&str; 27] = [
    "request_id",
    "call_type",
    "model",
    "deployment_id",
    "deployment_model",
    "provider",
    "api_base",
    "spend",
    "provider_cost",
    "billing_unit",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_cached",
    "images",
    "characters",
    "audio_seconds",
    "unpriced_reason",
    "request_tags",
    "metadata",
    "status",
    "http_status_code",
    "error_type",
    "stream",
    "latency_ms",
    "start_time",
    "end_time",
];

/// Rows per statement, largest first (a batch is split into these sizes).
const ROW_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

fn push_values(out: &mut Vec<Value>, r: SpendRecord) {
    out.extend([
        Value::from(r.request_id),
        Value::from(r.call_type),
        Value::from(r.model),
        Value::from(r.deployment_id),
        Value::from(r.deployment_model),
        Value::from(r.provider),
        Value::from(r.api_base),
        Value::from(r.spend),
        Value::from(r.provider_cost),
        Value::from(r.billing_unit),
        Value::from(r.prompt_tokens),
        Value::from(r.completion_tokens),
        Value::from(r.total_tokens),
        Value::from(r.prompt_tokens_cached),
        Value::from(r.images),
        Value::from(r.characters),
        Value::from(r.audio_seconds),
        Value::from(r.unpriced_reason),
        Value::from(r.request_tags),
        Value::from(r.metadata),
        Value::from(r.status),
        Value::from(r.http_status_code),
        Value::from(r.error_type),
        Value::from(r.stream),
        Value::from(r.latency_ms),
        Value::from(r.start_time),
        Value::from(r.end_time),
    ]);
}

/// `INSERT INTO spend_logs (...) VALUES (...), ...` for `rows` rows, with the
/// backend's placeholders. Built once per (backend, size) and reused.
fn insert_sql(backend: DbBackend, rows: usize) -> String {
    static CACHE: [[OnceLock<String>; 7]; 2] = [const { [const { OnceLock::new() }; 7] }; 2];
    let slot = ROW_CHUNKS.iter().position(|n| *n == rows);
    let build = || {
        let cols = &SPEND_COLUMNS;
        let mut sql = format!("INSERT INTO spend_logs ({}) VALUES ", cols.join(", "));
        let mut n = 0;
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for col in 0..cols.len() {
                n += 1;
                if col > 0 {
                    sql.push_str(", ");
                }
                match backend {
                    DbBackend::Postgres => {
                        sql.push('$');
                        sql.push_str(&n.to_string());
                    }
                    _ => sql.push('?'),
                }
            }
            sql.push(')');
        }
        sql
    };
    let backend_slot = usize::from(backend == DbBackend::Postgres);
    match slot {
        Some(i) => CACHE[backend_slot][i].get_or_init(build).clone(),
        None => build(),
    }
}

/// SUM over a BIGINT column; PostgreSQL widens it to NUMERIC, so cast back.
fn int_sum(col: row::Column) -> Expr {
    Func::cast_as(Func::sum(Expr::col(col)), Alias::new("BIGINT")).into()
}

impl Store {
    /// Write a batch of spend records: multi-row `INSERT`s of 64, 32, …, 1
    /// rows, so at most seven distinct statements exist and each stays in
    /// the driver's prepared-statement cache. The records are moved into the
    /// bind values (no copies), and no `RETURNING`: on SQLite fetching ids
    /// streams one row per record back from the database thread.
    pub async fn insert_spend(&self, records: Vec<SpendRecord>) -> Result<()> {
        let backend = self.db.get_database_backend();
        let mut rest = records.into_iter();
        let mut left = rest.len();
        // One commit per batch: on SQLite every commit appends each page it
        // touched to the WAL again, and consecutive chunks touch the same pages.
        let txn = if left > ROW_CHUNKS[0] { Some(self.begin_write().await?) } else { None };
        while left > 0 {
            let rows = ROW_CHUNKS.iter().copied().find(|n| *n <= left).unwrap_or(1);
            let mut values = Vec::with_capacity(rows * SPEND_COLUMNS.len());
            for r in rest.by_ref().take(rows) {
                push_values(&mut values, r);
            }
            let stmt = Statement::from_sql_and_values(backend, insert_sql(backend, rows), values);
            match &txn {
                Some(txn) => txn.execute_raw(stmt).await?,
                None => self.db.execute_raw(stmt).await?,
            };
            left -= rows;
        }
        if let Some(txn) = txn {
            txn.commit().await?;
        }
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
