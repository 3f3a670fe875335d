//! Schema migrations of the DeltaLLM gateway. They run on every start (idempotent)
//! and never import the storage entities, so old migrations keep compiling as the
//! entities evolve.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_core_tables;
mod m20261125_000003_create_route_groups;
mod m20261201_000004_drop_spend_lookup_indexes;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_core_tables::Migration),
            Box::new(m20261125_000003_create_route_groups::Migration),
            Box::new(m20261201_000004_drop_spend_lookup_indexes::Migration),
        ]
    }
}
