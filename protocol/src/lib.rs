//! The wire contract between `execgo-runtime` and `execgo-runtime-helper`,
//! and the on-disk contract between the shim and the runtime.
//!
//! * [`frame`]: length-prefixed bincode frames with a hard size cap.
//! * [`message`]: the handshake and the closed set of requests the helper
//!   accepts. Variants are only ever appended; the handshake carries
//!   [`PROTOCOL_VERSION`], bumped on any change of a type's shape.
//! * [`outcome`]: what the shim records in `tasks/<id>/result.json` and how a
//!   finished process is classified.
//! * [`taskdir`]: the task directory's entries, the claim record, the kill
//!   byte, process identity by start time, and the timestamp format.
//!
//! No I/O policy lives here: callers own their sockets and timeouts.

pub mod frame;
pub mod message;
pub mod outcome;
pub mod taskdir;

pub use frame::{
    decode, encode, read_frame, write_frame, FrameDecoder, FrameError, MAX_FRAME_BYTES,
};
pub use message::*;
pub use outcome::*;

/// Version spoken in the handshake. Both sides must agree exactly; any
/// change of a type's shape bumps it (the history is in `docs/helper.md`).
pub const PROTOCOL_VERSION: u32 = 7;

/// Magic bytes opening every [`message::Hello`], so a stray client is told
/// apart from a version mismatch.
pub const HELLO_MAGIC: [u8; 8] = *b"EXECGOH1";
