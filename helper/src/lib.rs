//! The helper's launch validation as a library, so that tests outside the
//! binary (`tests/validate_props.rs`) run the very code the helper runs. It
//! is pure: no I/O, no process state. Everything else of the helper is in
//! the binary (`main.rs`), which uses this module from here. (`fuzz/`
//! compiles the same file into its own crate, to fuzz it without building
//! the helper's dependencies.)
#![deny(unsafe_code)]

pub mod validate;
