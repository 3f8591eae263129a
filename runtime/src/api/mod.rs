//! The public HTTP API: errors ([`error`]), submit validation
//! ([`validate`]), listing filters ([`list`]), streamed answers
//! ([`streams`]), the router ([`routes`]), its OpenAPI document
//! ([`openapi`]) and the server ([`server`]); the bodies are
//! `crate::model`.

pub mod error;
pub mod list;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod streams;
pub mod validate;
