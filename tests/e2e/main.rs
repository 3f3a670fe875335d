//! End-to-end tests over real HTTP. Each area is a module; most tests run on
//! SQLite and PostgreSQL through `on_both_backends!`.

mod admin_models;
mod config_bootstrap;
mod credentials;
mod endpoints;
mod https_upstream;
mod proxy;
mod routing;
mod server;
mod spend_store;
mod validation;
