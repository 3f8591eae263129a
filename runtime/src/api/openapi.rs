//! The OpenAPI 3.1 document of this API: `docs/openapi.json`, compiled in
//! and served verbatim at `GET /api/v1/openapi.json`, so the file in the
//! repository and the served document cannot differ.
//!
//! The document is written by hand, not generated: its schemas state the
//! wire shapes exactly (required keys, omitted-when-empty keys, enums of
//! every status and code, `additionalProperties: false` on every response
//! object), which derive-based generators cannot express for the
//! hand-built `serde_json::Value` views. Drift is caught by tests instead:
//! the unit tests below compare the document's paths and enums with the
//! router and the Rust types, and `tests/e2e/openapi.rs` drives every
//! operation against the real binary and validates each answer against
//! the document's schema for its operation and status.

use warp::http::{header, Response, StatusCode};

use super::routes::{full, Reply};

/// `docs/openapi.json`, byte for byte.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// The answer to `GET /api/v1/openapi.json`.
pub fn reply() -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(DOCUMENT))
        .unwrap_or_else(|_| Response::new(full(DOCUMENT)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use execgo_runtime_protocol::{TaskErrorCode, TaskStatus};
    use serde_json::Value;

    use super::DOCUMENT;
    use crate::api::error::ApiErrorCode;

    const ALL_CODES: [ApiErrorCode; 10] = [
        ApiErrorCode::InvalidInput,
        ApiErrorCode::UnsupportedCapability,
        ApiErrorCode::InsufficientResources,
        ApiErrorCode::PermissionDenied,
        ApiErrorCode::NotFound,
        ApiErrorCode::Conflict,
        ApiErrorCode::ResourceLimitExceeded,
        ApiErrorCode::StorageUnavailable,
        ApiErrorCode::NotReady,
        ApiErrorCode::Internal,
    ];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
    }

    fn strings(v: &Value) -> BTreeSet<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    }

    fn json_name<T: serde::Serialize>(t: T) -> String {
        serde_json::to_value(t)
            .expect("serialize")
            .as_str()
            .expect("a string enum")
            .to_string()
    }

    /// The path templates the router matches, read from the patterns of
    /// its `match` (a quoted segment is literal, a binding is a
    /// parameter): a route added to the router without the document, or
    /// the other way round, fails here.
    fn router_paths() -> BTreeSet<String> {
        let src = include_str!("routes.rs");
        src.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("[\"") && l.contains("=>"))
            .map(|l| {
                let inner = &l[1..l.find(']').expect("closing bracket")];
                let segs: Vec<String> = inner
                    .split(',')
                    .map(str::trim)
                    .map(|s| match s.strip_prefix('"') {
                        Some(lit) => lit.trim_end_matches('"').to_string(),
                        None => format!("{{{s}}}"),
                    })
                    .collect();
                format!("/{}", segs.join("/"))
            })
            .collect()
    }

    #[test]
    fn the_document_names_exactly_the_routers_paths() {
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["version"], env!("CARGO_PKG_VERSION"));
        let documented: BTreeSet<String> = d["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        let routed = router_paths();
        assert!(routed.len() >= 12, "router patterns not found: {routed:?}");
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_documents_enums_are_the_types_enums() {
        let d = doc();
        let s = &d["components"]["schemas"];
        let api_codes: BTreeSet<String> = ALL_CODES
            .into_iter()
            .map(|c| {
                // Exhaustive: a new code fails to compile until it is listed.
                match c {
                    ApiErrorCode::InvalidInput
                    | ApiErrorCode::UnsupportedCapability
                    | ApiErrorCode::InsufficientResources
                    | ApiErrorCode::PermissionDenied
                    | ApiErrorCode::NotFound
                    | ApiErrorCode::Conflict
                    | ApiErrorCode::ResourceLimitExceeded
                    | ApiErrorCode::StorageUnavailable
                    | ApiErrorCode::NotReady
                    | ApiErrorCode::Internal => json_name(c),
                }
            })
            .collect();
        assert_eq!(strings(&s["ApiErrorCode"]["enum"]), api_codes);
        let statuses: BTreeSet<String> = TaskStatus::ALL.into_iter().map(json_name).collect();
        assert_eq!(strings(&s["TaskStatus"]["enum"]), statuses);
        let task_codes: BTreeSet<String> = [
            TaskErrorCode::Timeout,
            TaskErrorCode::Cancelled,
            TaskErrorCode::MemoryLimitExceeded,
            TaskErrorCode::CpuLimitExceeded,
            TaskErrorCode::ExitNonzero,
            TaskErrorCode::LaunchFailed,
            TaskErrorCode::SandboxSetupFailed,
            TaskErrorCode::Internal,
        ]
        .into_iter()
        .map(json_name)
        .collect();
        assert_eq!(strings(&s["TaskErrorCode"]["enum"]), task_codes);
        // Every code an operation documents under a status answers with
        // that status (405, 413 and 416 are `invalid_input` with a more precise
        // status).
        let status_of: std::collections::BTreeMap<String, u16> = ALL_CODES
            .into_iter()
            .map(|c| (json_name(c), c.http_status()))
            .collect();
        for (path, item) in d["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Some(responses) = op["responses"].as_object() else {
                    continue;
                };
                for (status, r) in responses {
                    let name = r["$ref"].as_str().unwrap_or("");
                    let Some(name) = name.strip_prefix("#/components/responses/") else {
                        continue;
                    };
                    let resp = &d["components"]["responses"][name];
                    let schema = &resp["content"]["application/json"]["schema"]["allOf"][1];
                    let codes =
                        strings(&schema["properties"]["error"]["properties"]["code"]["enum"]);
                    assert!(!codes.is_empty(), "{method} {path} {status}: no codes");
                    for code in codes {
                        let want = status_of[&code];
                        let ok = want.to_string() == *status
                            || (code == "invalid_input"
                                && ["405", "413", "416"].contains(&status.as_str()));
                        assert!(ok, "{method} {path}: {code} under {status}, answers {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_client_event_type_is_documented() {
        let d = doc();
        let ev = &d["components"]["schemas"]["EventRecord"]["properties"];
        let types = strings(&ev["event_type"]["enum"]);
        let client = strings(&ev["type"]["enum"]);
        for t in &types {
            let c = crate::engine::view::client_event_type(t);
            assert!(client.contains(c), "{t} maps to undocumented {c}");
        }
    }
}
