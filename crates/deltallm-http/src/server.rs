//! The gateway's HTTP/1.1 server: an accept loop, one task per connection
//! (the JSON proxy routes on the lean path of [`h1`], everything else by
//! hyper's HTTP/1 driver), a request-head timeout and a graceful shutdown
//! that lets in-flight requests finish.
//!
//! `axum::serve` gives hyper no timer, so a client that opens a connection
//! and never completes a request head holds it, and its buffers, forever.
//! Here a request head must arrive within
//! [`ServerOptions::header_read_timeout`], counted from when the connection
//! starts waiting for it (so an idle keep-alive connection is closed after
//! that long too).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::GatewayService;

mod h1;
mod rewind;

/// How the server treats client connections.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Longest wait for a complete request head; `None` waits forever.
    pub header_read_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT) }
    }
}

/// The default wait for a request head (and an idle keep-alive connection's life).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `service` on `listener` until `shutdown` resolves, then stop
/// accepting, let every connection finish the request it is serving (idle
/// ones close at once) and return when the last one has.
pub async fn serve<F>(listener: TcpListener, service: GatewayService, options: ServerOptions, shutdown: F)
where
    F: Future<Output = ()>,
{
    let mut hyper = hyper::server::conn::http1::Builder::new();
    hyper.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
    let shared = Arc::new(h1::Shared { service, hyper, header_read_timeout: options.header_read_timeout });
    // Connections watch `stop` (it changes once, at shutdown); `open` counts
    // them (one receiver each).
    let (stop, _) = watch::channel(());
    let (open, open_rx) = watch::channel(());
    drop(open_rx);
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        tune_client_socket(&stream);
        let counted = open.subscribe();
        let connection = h1::connection(stream, shared.clone(), stop.subscribe());
        tokio::spawn(async move {
            connection.await;
            drop(counted);
        });
    }
    drop(listener);
    stop.send_replace(());
    open.closed().await;
}

/// Without `TCP_NODELAY` a streamed response's later small writes wait for
/// the client's delayed ACK.
fn tune_client_socket(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }
}

/// A failed `accept`: a connection the client already abandoned is skipped;
/// anything else (out of file descriptors, say) is logged and waited out
/// briefly instead of spinning on it.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a client connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            tracing::debug!("client connection closed: no complete request head in time");
        } else {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
    }
}
