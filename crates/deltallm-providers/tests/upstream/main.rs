//! Integration tests against real HTTP on loopback: wiremock upstreams for
//! request/response shapes, raw TCP servers where chunk timing matters.

mod anthropic;
mod errors;
mod gemini;
mod openai;
mod plain_http;
mod probe;
mod streaming;
mod support;
