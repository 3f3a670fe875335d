//! `route_groups` table (ADM-6).

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_key: String,
    pub name: String,
    pub mode: String,
    pub routing_strategy: Option<String>,
    pub enabled: bool,
    #[sea_orm(column_type = "Text")]
    pub metadata: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
