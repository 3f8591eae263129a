//! What the engine's operations can fail with. The API layer maps each to
//! its code and HTTP status (`api::error`).

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("task not found: {0}")]
    NotFound(String),
    #[error("task already exists: {0}")]
    Conflict(String),
    #[error("queue is full")]
    QueueFull,
    #[error("too many streams: at most {0} follow at once (--max-streams)")]
    TooManyStreams(u64),
    /// A `Range` outside the log; its length is given.
    #[error("range not satisfiable: the log is {0} bytes")]
    RangeNotSatisfiable(u64),
    #[error("permission denied: kill requires owner '{0}'")]
    NotOwner(String),
    /// The task's reservation can never fit; the message says where.
    #[error("{0}")]
    InsufficientResources(String),
    /// Strict mode, and the host cannot provide these.
    #[error("this runtime cannot provide: {}", .missing.join(", "))]
    Unsupported { missing: Vec<&'static str> },
    /// The data dir refused a write (full, read-only): retry later.
    #[error("{what}: {source}")]
    StorageUnavailable {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotReady(String),
    /// The request asks for something this host's configuration refuses
    /// (the API layer cannot tell without the helper's answer).
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn storage(what: &'static str, source: std::io::Error) -> EngineError {
        EngineError::StorageUnavailable { what, source }
    }

    /// The data dir refused a write (full, read-only, failing): a retry
    /// may succeed once an operator acted.
    pub fn is_storage_unavailable(&self) -> bool {
        match self {
            EngineError::StorageUnavailable { .. } => true,
            EngineError::Store(s) => s.is_storage_unavailable(),
            _ => false,
        }
    }

    /// The data dir's file system is full (or the runtime's quota on it
    /// used up): the step that found no room, for the message.
    pub fn storage_full(&self) -> Option<&str> {
        match self {
            EngineError::StorageUnavailable { what, source }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                Some(what)
            }
            EngineError::Store(s) if s.is_storage_full() => Some("writing the database"),
            _ => None,
        }
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
