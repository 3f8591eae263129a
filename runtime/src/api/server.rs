//! The HTTP server of the runtime's listeners (the main API, and the
//! OpenSandbox one): accepts connections, has each judged by the
//! [`PeerGate`] (a task's connection is answered 403 on every request),
//! and serves it with hyper (HTTP/1.1, and HTTP/2 with prior knowledge).
//! On stop it closes the listener and waits for the requests in flight.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use warp::http::{Request, Response};

use super::error::ApiError;
use super::routes;
use crate::engine::Engine;
use crate::peer_gate::{PeerGate, Refusal, Verdict};

/// The main API: every request through [`routes::serve`]; a refused
/// connection gets the contract's `permission_denied` envelope.
pub async fn run(
    engine: Arc<Engine>,
    gate: Arc<PeerGate>,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()>,
) {
    let e = Arc::clone(&engine);
    let service = move |verdict: Verdict| {
        let engine = Arc::clone(&e);
        hyper::service::service_fn(move |req| {
            let engine = Arc::clone(&engine);
            let verdict = verdict.clone();
            async move {
                Ok::<_, Infallible>(match verdict {
                    Verdict::Serve => routes::serve(engine, req).await,
                    Verdict::Refuse(r) => routes::error_reply(&refused(&r)),
                })
            }
        })
    };
    // Open streams end at stop, so the drain does not wait for followers.
    serve(listener, gate, service, stop, || engine.stop_streams()).await;
}

/// The error every request of a refused connection gets.
pub fn refused(r: &Refusal) -> ApiError {
    ApiError::new(super::error::ApiErrorCode::PermissionDenied, r.message())
}

/// Accepts on `listener` until `stop`, serving each connection with the
/// service `make` builds for its verdict; then runs `on_stop` and waits
/// for the connections' requests in flight.
pub async fn serve<M, S, B>(
    listener: tokio::net::TcpListener,
    gate: Arc<PeerGate>,
    make: M,
    stop: impl Future<Output = ()>,
    on_stop: impl FnOnce(),
) where
    M: Fn(Verdict) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let make = Arc::new(make);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        // Counted by the shutdown from now, so a connection still being
        // judged is waited for too.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let gate = Arc::clone(&gate);
        let make = Arc::clone(&make);
        tokio::spawn(async move {
            // Judged once, before any request is read: one lookup per
            // connection, and a peer that closes at once still has its
            // socket when it is looked up.
            let verdict = match (stream.peer_addr(), stream.local_addr()) {
                (Ok(peer), Ok(local)) => gate.check(peer, local).await,
                // The peer is gone already (ENOTCONN): nothing to serve.
                _ => return,
            };
            let conn = builder
                .serve_connection(TokioIo::new(stream), make(verdict))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
    drop(listener);
    on_stop();
    graceful.shutdown().await;
}
