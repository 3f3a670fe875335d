//! `spend_logs` table (SPEND-3).

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "spend_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub request_id: String,
    pub call_type: String,
    pub model: String,
    pub deployment_id: Option<String>,
    pub deployment_model: Option<String>,
    pub provider: String,
    pub api_base: Option<String>,
    pub spend: f64,
    pub provider_cost: f64,
    pub billing_unit: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub prompt_tokens_cached: i64,
    pub images: i64,
    pub characters: i64,
    pub audio_seconds: f64,
    pub unpriced_reason: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub request_tags: String,
    #[sea_orm(column_type = "Text")]
    pub metadata: String,
    pub status: String,
    pub http_status_code: i32,
    pub error_type: Option<String>,
    pub stream: bool,
    pub latency_ms: i64,
    pub start_time: DateTimeUtc,
    pub end_time: DateTimeUtc,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
