//! What the fuzz targets share: the helper's launch validation, compiled
//! from the helper's own source file.
//!
//! `helper/src/validate.rs` is pure (no I/O) and needs only the protocol
//! crate, `serde_json` and `thiserror`, so it is included here rather than
//! reached through the helper's library target: depending on the helper
//! package would build all of its dependencies (clap, tracing-subscriber
//! and its regex engine, nix, seccompiler...) with the fuzzing
//! instrumentation, which doubled the build of this crate.

#[path = "../../helper/src/validate.rs"]
pub mod validate;
