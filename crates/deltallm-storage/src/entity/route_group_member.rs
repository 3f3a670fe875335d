//! `route_group_members` table (ADM-6).

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_group_members")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_key: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub deployment_id: String,
    pub enabled: bool,
    pub weight: Option<i32>,
    pub priority: Option<i32>,
    /// Member order inside the group (insertion order).
    pub position: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
