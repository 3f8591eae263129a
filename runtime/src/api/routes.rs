//! The router: reads method, path, query, headers and (for submit) a
//! size-capped body, then dispatches by hand, so unknown routes, wrong
//! methods and oversized bodies all answer in the error envelope with the
//! right status (404, 405 with `Allow`, 413).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, BodyStream, Full};
use serde::Serialize;
use warp::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use warp::Buf;

use super::error::{ApiError, ApiErrorCode};
use super::{list, streams, validate};
use crate::engine::Engine;

/// Largest accepted request body (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A response body: whole, or streamed as a follower reads it.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
pub type Reply = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Answers one request of the main API.
pub async fn serve(engine: Arc<Engine>, req: Request<hyper::body::Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body =
        BodyStream::new(body).try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    match handle(
        engine,
        &parts.method,
        path,
        query,
        &parts.headers,
        Box::pin(body),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => error_reply(&e),
    }
}

pub(crate) fn json_reply<T: Serialize>(status: u16, body: &T) -> Reply {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

pub fn error_reply(e: &ApiError) -> Reply {
    let mut r = json_reply(e.status(), &e.body());
    if let Some(allow) = e.allow {
        if let Ok(v) = header::HeaderValue::from_str(allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
    }
    if let Some(len) = e.content_range {
        if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{len}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// Reads a whole request body of at most [`MAX_BODY_BYTES`].
pub(crate) async fn read_body<S, B, E>(mut body: S) -> Result<Vec<u8>, ApiError>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
        if out.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

fn method_check(
    method: &Method,
    want: &Method,
    path: &str,
    allow: &'static str,
) -> Result<(), ApiError> {
    if method == want {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(method.as_str(), path, allow))
    }
}

/// A path id that no task can have is a 404 before any lookup.
fn known_id(id: &str) -> Result<(), ApiError> {
    validate::task_id(id).map_err(|_| ApiError::not_found(id))
}

async fn handle<S, B, E>(
    engine: Arc<Engine>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: S,
) -> Result<Reply, ApiError>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: Buf,
    E: std::fmt::Display,
{
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = &Method::GET;
    let post = &Method::POST;
    match segments.as_slice() {
        ["healthz"] => {
            method_check(method, get, path, "GET")?;
            Ok(json_reply(
                200,
                &serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}),
            ))
        }
        ["readyz"] => {
            method_check(method, get, path, "GET")?;
            engine.ready().await?;
            Ok(json_reply(
                200,
                &serde_json::json!({"status": "ready", "version": env!("CARGO_PKG_VERSION")}),
            ))
        }
        ["api", "v1", "tasks"] if method == get => {
            let filter = list::parse(query)?;
            Ok(json_reply(200, &engine.list(filter).await?))
        }
        ["api", "v1", "tasks"] => {
            method_check(method, post, path, "GET, POST")?;
            let bytes = read_body(body).await?;
            let req = validate::parse_submit(&bytes)?;
            let resp = engine.submit(req).await?;
            Ok(json_reply(200, &resp))
        }
        ["api", "v1", "tasks", id] if !id.is_empty() => {
            method_check(method, get, path, "GET")?;
            known_id(id)?;
            Ok(json_reply(200, &engine.status(id).await?))
        }
        ["api", "v1", "tasks", id, "kill"] if !id.is_empty() => {
            method_check(method, post, path, "POST")?;
            known_id(id)?;
            let owner = headers
                .get("x-execgo-owner")
                .map(|v| {
                    v.to_str()
                        .map_err(|_| ApiError::invalid("x-execgo-owner must be visible ASCII"))
                })
                .transpose()?;
            Ok(json_reply(200, &engine.kill(id, owner).await?))
        }
        ["api", "v1", "tasks", id, "events"] if !id.is_empty() => {
            method_check(method, get, path, "GET")?;
            known_id(id)?;
            match streams::events_query(query, headers)? {
                Some(after) => streams::follow_events(&engine, id, after).await,
                None => Ok(json_reply(200, &engine.events(id).await?)),
            }
        }
        ["api", "v1", "tasks", id, "logs", name] if !id.is_empty() => {
            method_check(method, get, path, "GET")?;
            known_id(id)?;
            streams::log(&engine, id, name, query, headers).await
        }
        ["api", "v1", "runtime", "info"] => {
            method_check(method, get, path, "GET")?;
            Ok(json_reply(200, &crate::views::info(&engine)))
        }
        ["api", "v1", "runtime", "capabilities"] => {
            method_check(method, get, path, "GET")?;
            Ok(json_reply(200, &crate::views::capabilities(&engine)))
        }
        ["api", "v1", "runtime", "config"] => {
            method_check(method, get, path, "GET")?;
            Ok(json_reply(200, &crate::views::config(&engine)))
        }
        ["api", "v1", "runtime", "resources"] => {
            method_check(method, get, path, "GET")?;
            Ok(json_reply(200, &crate::views::resources(&engine).await?))
        }
        ["api", "v1", "openapi.json"] => {
            method_check(method, get, path, "GET")?;
            Ok(super::openapi::reply())
        }
        ["metrics"] => {
            method_check(method, get, path, "GET")?;
            let text = engine.metrics_text().await?;
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(full(text))
                .map_err(|e| ApiError::internal(format!("building the response: {e}")))
        }
        _ => Err(ApiError::verbatim(
            ApiErrorCode::NotFound,
            format!("not found: no route for {path}"),
        )),
    }
}
