//! The JSON error envelope `{"error":{"code","message","details"}}` and the
//! mapping of each code to its HTTP status.

use serde::Serialize;

use crate::engine::{error_chain, EngineError};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    InvalidInput,
    UnsupportedCapability,
    InsufficientResources,
    PermissionDenied,
    NotFound,
    Conflict,
    ResourceLimitExceeded,
    StorageUnavailable,
    NotReady,
    Internal,
}

impl ApiErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::InvalidInput
            | ApiErrorCode::UnsupportedCapability
            | ApiErrorCode::InsufficientResources => 400,
            ApiErrorCode::PermissionDenied => 403,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::Conflict => 409,
            ApiErrorCode::ResourceLimitExceeded => 429,
            ApiErrorCode::Internal => 500,
            ApiErrorCode::StorageUnavailable | ApiErrorCode::NotReady => 503,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            ApiErrorCode::InvalidInput => "invalid input",
            ApiErrorCode::UnsupportedCapability => "unsupported capability",
            ApiErrorCode::InsufficientResources => "insufficient resources",
            ApiErrorCode::PermissionDenied => "permission denied",
            ApiErrorCode::NotFound => "not found",
            ApiErrorCode::Conflict => "conflict",
            ApiErrorCode::ResourceLimitExceeded => "resource limit exceeded",
            ApiErrorCode::StorageUnavailable => "storage unavailable",
            ApiErrorCode::NotReady => "not ready",
            ApiErrorCode::Internal => "internal error",
        }
    }
}

/// An API failure: code, human message, optional details.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    pub code: ApiErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// HTTP status; the code's own unless a route-level failure (405, 413)
    /// reports client input with a more precise status.
    #[serde(skip)]
    pub http_status: u16,
    /// `Allow` header for 405.
    #[serde(skip)]
    pub allow: Option<&'static str>,
    /// The length for `Content-Range: bytes */<len>` on 416.
    #[serde(skip)]
    pub content_range: Option<u64>,
}

impl ApiError {
    /// `message` becomes `<kind>: <detail>`.
    pub fn new(code: ApiErrorCode, detail: impl AsRef<str>) -> Self {
        ApiError {
            code,
            message: format!("{}: {}", code.kind(), detail.as_ref()),
            details: None,
            http_status: code.http_status(),
            allow: None,
            content_range: None,
        }
    }

    /// A message used verbatim (for the contract's fixed phrasings).
    pub fn verbatim(code: ApiErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            http_status: code.http_status(),
            allow: None,
            content_range: None,
        }
    }

    pub fn invalid(detail: impl AsRef<str>) -> Self {
        Self::new(ApiErrorCode::InvalidInput, detail)
    }

    pub fn not_found(task_id: &str) -> Self {
        Self::verbatim(ApiErrorCode::NotFound, format!("task not found: {task_id}"))
    }

    pub fn internal(detail: impl AsRef<str>) -> Self {
        Self::new(ApiErrorCode::Internal, detail)
    }

    /// 405 for a known route with the wrong method; `allow` lists methods.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        let mut e = Self::invalid(format!(
            "method {method} is not allowed on {path} (allowed: {allow})"
        ));
        e.http_status = 405;
        e.allow = Some(allow);
        e
    }

    /// 413 for a body over the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        let mut e = Self::invalid(format!("request body exceeds the limit of {limit} bytes"));
        e.http_status = 413;
        e
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn status(&self) -> u16 {
        self.http_status
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// The engine's failures as the contract spells them.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use ApiErrorCode as C;
        let msg = e.to_string();
        if let Some(step) = e.storage_full() {
            // The contract has no code of its own for it: 503 as for any
            // storage failure, saying what an operator has to do.
            tracing::error!(error = %error_chain(&e), "storage full");
            return ApiError::verbatim(
                C::StorageUnavailable,
                format!("storage full: no space left on device ({step})"),
            );
        }
        match e {
            EngineError::NotFound(_) => ApiError::verbatim(C::NotFound, msg),
            EngineError::Conflict(_) => ApiError::verbatim(C::Conflict, msg),
            EngineError::QueueFull => ApiError::verbatim(C::ResourceLimitExceeded, msg),
            EngineError::TooManyStreams(_) => ApiError::new(C::ResourceLimitExceeded, msg),
            EngineError::RangeNotSatisfiable(len) => {
                let mut e = ApiError::new(C::InvalidInput, msg);
                e.http_status = 416;
                e.content_range = Some(len);
                e
            }
            EngineError::NotOwner(_) => ApiError::verbatim(C::PermissionDenied, msg),
            EngineError::InsufficientResources(_) => ApiError::new(C::InsufficientResources, msg),
            EngineError::Unsupported { missing } => ApiError::new(C::UnsupportedCapability, msg)
                .with_details(serde_json::json!({ "missing": missing })),
            EngineError::StorageUnavailable { .. } => {
                tracing::error!(error = %error_chain(&e), "storage unavailable");
                ApiError::new(C::StorageUnavailable, msg)
            }
            EngineError::Store(s) => {
                let chain = error_chain(&s);
                if s.is_storage_unavailable() {
                    tracing::error!(error = %chain, "storage unavailable");
                    ApiError::new(C::StorageUnavailable, chain)
                } else {
                    tracing::error!(error = %chain, "store failure");
                    ApiError::internal(chain)
                }
            }
            EngineError::NotReady(_) => ApiError::new(C::NotReady, msg),
            EngineError::InvalidInput(_) => ApiError::new(C::InvalidInput, msg),
            EngineError::Internal(_) => ApiError::internal(msg),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let e = ApiError::invalid("execution.program must not be blank");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "invalid_input",
                "message": "invalid input: execution.program must not be blank"}})
        );
        assert_eq!(e.status(), 400);
        assert_eq!(ApiError::not_found("x").message, "task not found: x");
    }

    #[test]
    fn engine_errors_keep_the_contracts_phrasing() {
        let cases = [
            (
                EngineError::NotFound("t".into()),
                "not_found",
                404,
                "task not found: t",
            ),
            (
                EngineError::Conflict("t".into()),
                "conflict",
                409,
                "task already exists: t",
            ),
            (
                EngineError::QueueFull,
                "resource_limit_exceeded",
                429,
                "queue is full",
            ),
            (
                EngineError::NotOwner("alice".into()),
                "permission_denied",
                403,
                "permission denied: kill requires owner 'alice'",
            ),
            (
                EngineError::Unsupported {
                    missing: vec!["memory_limit"],
                },
                "unsupported_capability",
                400,
                "unsupported capability: this runtime cannot provide: memory_limit",
            ),
            (
                EngineError::storage("writing result.json", std::io::Error::other("disk full")),
                "storage_unavailable",
                503,
                "storage unavailable: writing result.json: disk full",
            ),
            (
                EngineError::storage(
                    "writing the task directory",
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ),
                "storage_unavailable",
                503,
                "storage full: no space left on device (writing the task directory)",
            ),
            (
                EngineError::Store(StoreError::Sqlite(
                    "inserting a task",
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        None,
                    ),
                )),
                "storage_unavailable",
                503,
                "storage full: no space left on device (writing the database)",
            ),
        ];
        for (e, code, status, message) in cases {
            let a = ApiError::from(e);
            assert_eq!(a.body()["error"]["code"], code);
            assert_eq!((a.status(), a.message.as_str()), (status, message));
        }
    }
}
