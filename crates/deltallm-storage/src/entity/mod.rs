//! sea-orm entities. JSON documents are stored as text so SQLite and
//! PostgreSQL share one schema; secret fields live only in `secret_ciphertext`.

pub mod deployment;
pub mod named_credential;
pub mod route_group;
pub mod route_group_member;
pub mod route_group_policy;
pub mod spend_log;
