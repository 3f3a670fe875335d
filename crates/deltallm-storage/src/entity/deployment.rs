//! `deployments` table (DEP-1).

use sea_orm::entity::prelude::*;

#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub deployment_id: String,
    pub model_name: String,
    pub provider: String,
    pub mode: String,
    pub named_credential_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub deltallm_params: String,
    #[sea_orm(column_type = "Text")]
    pub model_info: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub secret_ciphertext: Option<String>,
    pub secret_key_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[allow(missing_docs)]
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
