//! The main API's HTTP server: accepts connections on the listener and
//! serves each with hyper (HTTP/1.1, and HTTP/2 with prior knowledge),
//! every request through [`routes::serve`]. On stop it closes the
//! listener, ends the open streams and waits for the requests in flight.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

use super::routes;
use crate::engine::Engine;

pub async fn run(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
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
        let engine = Arc::clone(&engine);
        let service = hyper::service::service_fn(move |req| {
            let engine = Arc::clone(&engine);
            async move { Ok::<_, Infallible>(routes::serve(engine, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
    drop(listener);
    engine.stop_streams();
    graceful.shutdown().await;
}
