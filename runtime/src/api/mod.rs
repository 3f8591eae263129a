//! The public HTTP API: bodies ([`model`]), errors ([`error`]), submit
//! validation ([`validate`]) and the router ([`routes`]).

pub mod error;
pub mod model;
pub mod routes;
pub mod validate;
