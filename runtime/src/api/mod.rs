//! The public HTTP API: errors ([`error`]), submit
//! validation ([`validate`]), the router ([`routes`]) and its OpenAPI
//! document ([`openapi`]); the bodies are `crate::model`.

pub mod error;
pub mod openapi;
pub mod routes;
pub mod validate;
