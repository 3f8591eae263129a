//! The task-executor's routes, at root paths, on their own listener. Every
//! failure answers in the peer's envelope, `{"code": "<HTTP status text>",
//! "message": "..."}`: unknown routes 404, wrong methods 405 (with
//! `Allow`), oversized bodies 413, bad bodies 400, a duplicate name 409,
//! and every request of a connection from a task 403 (`Forbidden`, see
//! `crate::peer_gate`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::Service;
use serde::Serialize;
use warp::http::{header, Method, Request, Response, StatusCode};
use warp::{Buf, Filter, Reply as _};

use super::wire::{self, WireError};
use super::{OpenSandbox, OsbxError};
use crate::api::error::ApiError;
use crate::api::routes::{read_body, MAX_BODY_BYTES};
use crate::engine::error_chain;

type Reply = Response<String>;

/// A failure as the peer answers it.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    pub allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            allow: None,
        }
    }

    /// `{"code": "<status text>", "message": ...}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.status.canonical_reason().unwrap_or("Error"),
            "message": self.message,
        })
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure {
            status,
            message: e.message,
            allow: e.allow,
        }
    }
}

impl From<OsbxError> for Failure {
    fn from(e: OsbxError) -> Failure {
        match e {
            OsbxError::Wire(w) => Failure::new(StatusCode::BAD_REQUEST, w.to_string()),
            OsbxError::Engine(e) => ApiError::from(e).into(),
            OsbxError::Corrupt(..) => {
                let chain = error_chain(&e);
                tracing::error!(error = %chain, "opensandbox task unreadable");
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, chain)
            }
        }
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Failure {
        OsbxError::Wire(e).into()
    }
}

/// Serves this API on `listener` until `stop`, through the runtime's one
/// server loop (`crate::api::server::serve`), which judges every
/// connection with `gate`.
pub async fn serve(
    osbx: Arc<OpenSandbox>,
    gate: Arc<crate::peer_gate::PeerGate>,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()>,
) {
    use crate::peer_gate::Verdict;
    let routes = hyper_util::service::TowerToHyperService::new(warp::service(routes(osbx)));
    let make = move |verdict: Verdict| {
        let routes = routes.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let routes = routes.clone();
            let verdict = verdict.clone();
            async move {
                match verdict {
                    Verdict::Serve => routes.call(req).await,
                    Verdict::Refuse(r) => Ok::<_, Infallible>(
                        failure_reply(&crate::api::server::refused(&r).into()).into_response(),
                    ),
                }
            }
        })
    };
    crate::api::server::serve(listener, gate, make, stop, || {}).await;
}

pub fn routes(
    osbx: Arc<OpenSandbox>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::body::stream())
        .then(move |method: Method, path: warp::path::FullPath, body| {
            let osbx = Arc::clone(&osbx);
            async move {
                match handle(osbx, &method, path.as_str(), body).await {
                    Ok(r) => r,
                    Err(f) => failure_reply(&f),
                }
            }
        })
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(text)
        .unwrap_or_default()
}

fn failure_reply(f: &Failure) -> Reply {
    let mut r = json_reply(f.status, &f.body());
    if let Some(allow) = f.allow {
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    }
    r
}

fn method_is(method: &Method, allowed: &[Method], allow: &'static str) -> Result<(), Failure> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(Failure {
            allow: Some(allow),
            ..Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed here (allowed: {allow})"),
            )
        })
    }
}

async fn body_of<S, B>(body: S) -> Result<Vec<u8>, Failure>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    read_body(body).await.map_err(|e| {
        if e.status() == 413 {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            e.into()
        }
    })
}

async fn handle<S, B>(
    osbx: Arc<OpenSandbox>,
    method: &Method,
    path: &str,
    body: S,
) -> Result<Reply, Failure>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["health"] => {
            method_is(method, &[Method::GET], "GET")?;
            Ok(json_reply(
                StatusCode::OK,
                &serde_json::json!({"status": "healthy"}),
            ))
        }
        ["tasks"] => {
            method_is(method, &[Method::POST], "POST")?;
            let task = wire::parse_task(&body_of(body).await?)?;
            let out = osbx.create(task).await.map_err(|e| match e {
                // The peer answers 500 here; a duplicate is the client's.
                OsbxError::Engine(crate::engine::EngineError::Conflict(name)) => {
                    Failure::new(StatusCode::CONFLICT, format!("task already exists: {name}"))
                }
                e => e.into(),
            })?;
            Ok(json_reply(StatusCode::CREATED, &out))
        }
        ["tasks", name] if !name.is_empty() => {
            method_is(method, &[Method::GET, Method::DELETE], "GET, DELETE")?;
            let known = execgo_runtime_protocol::valid_task_id(name);
            if method == Method::DELETE {
                // An unknown name is a success, as the peer answers.
                if known {
                    osbx.delete(name).await?;
                }
                return Ok(Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(String::new())
                    .unwrap_or_default());
            }
            let found = if known { osbx.get(name).await? } else { None };
            match found {
                Some(t) => Ok(json_reply(StatusCode::OK, &t)),
                None => Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    format!("task not found: {name}"),
                )),
            }
        }
        ["setTasks"] => {
            method_is(method, &[Method::POST], "POST")?;
            let desired = wire::parse_task_list(&body_of(body).await?)?;
            Ok(json_reply(StatusCode::OK, &osbx.set(desired).await?))
        }
        ["getTasks"] => {
            method_is(method, &[Method::GET], "GET")?;
            Ok(json_reply(StatusCode::OK, &osbx.list().await?))
        }
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("not found: no route for {path}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_use_the_peers_envelope() {
        let f: Failure = WireError::ContainerMode("podTemplateSpec").into();
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        assert_eq!(f.body()["code"], "Bad Request");
        assert!(f.body()["message"]
            .as_str()
            .unwrap()
            .starts_with("podTemplateSpec is not supported"));
        let f: Failure = OsbxError::Engine(crate::engine::EngineError::QueueFull).into();
        assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            f.body(),
            serde_json::json!({"code": "Too Many Requests", "message": "queue is full"})
        );
        let f: Failure = OsbxError::Engine(crate::engine::EngineError::NotFound("x".into())).into();
        assert_eq!(f.body()["code"], "Not Found");
    }
}
