//! Upstream provider adapters of the DeltaLLM gateway.
//!
//! This crate owns everything between "call this deployment with this body"
//! and "here is an OpenAI-shaped reply or a classified error": the one shared
//! `reqwest` client, per-deployment [`Connection`]s precomputed at registry
//! build (upstream model id, URLs, sensitive auth headers, default params),
//! request and response translation for the OpenAI-compatible, Azure,
//! Anthropic and Gemini wire families, SSE parsing, and the RUN-11/RUN-12
//! error classification the router reads.
//!
//! It must not import a database, axum or any router/core crate: it knows
//! nothing about routing, retries, health state, keys or spend. It depends
//! only on `deltallm-domain` for the provider registry and shared vocabulary.

mod anthropic;
mod body;
mod client;
pub mod completions;
mod connection;
mod direct;
mod error;
mod gemini;
mod openai;
mod operation;
mod sse;
mod tools;
mod usage;

pub use body::{Raw, RequestBody};
pub use client::{FormField, FormValue, HttpSettings, Probe, Providers, Reply};
pub use connection::Connection;
pub use error::{Error, ErrorClass, Result, UpstreamFields};
pub use operation::Operation;
pub use sse::{ChatStream, StreamUsage};
pub use usage::Usage;
