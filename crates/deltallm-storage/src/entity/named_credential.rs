//! `named_credentials` table (CRED-1).

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "named_credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub credential_id: String,
    #[sea_orm(unique)]
    pub name: String,
    pub provider: String,
    #[sea_orm(column_type = "Text")]
    pub connection_config: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub secret_ciphertext: Option<String>,
    pub secret_key_id: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub metadata: Option<String>,
    pub created_by_account_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
