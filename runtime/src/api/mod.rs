//! The public HTTP API: errors ([`error`]), submit
//! validation ([`validate`]) and the router ([`routes`]); the bodies are
//! `crate::model`.

pub mod error;
pub mod routes;
pub mod validate;
