//! `route_group_policies` table (ADM-7): one row per policy version.

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_group_policies")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub group_key: String,
    pub version: i32,
    /// `draft`, `published` or `archived`.
    pub status: String,
    #[sea_orm(column_type = "Text")]
    pub policy: String,
    pub created_at: DateTimeUtc,
    pub published_at: Option<DateTimeUtc>,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
