//! Serving the gateway: bind, serve, shut down gracefully.

use std::net::SocketAddr;

use deltallm_core::Gateway;
use tokio::net::{TcpListener, TcpStream};

/// Resolve when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}

/// Bind `addr`, failing with a message that names it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr).await.map_err(|e| crate::Error::Io(format!("cannot listen on {addr}: {e}")))
}

/// Flush pending spend records before exit.
pub async fn drain(gateway: &Gateway) {
    gateway.flush_spend().await;
}

/// Per-connection socket options for accepted clients. Without `TCP_NODELAY`
/// a streamed response's later small writes wait for the client's delayed ACK.
pub fn tune_client_socket(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
    }
}

/// The async runtime for the process. With one usable CPU (a one-core
/// container or a `taskset` pin) a current-thread runtime avoids the
/// multi-thread scheduler's cross-thread hand-offs; otherwise one worker
/// per CPU. `DELTALLM_WORKER_THREADS` overrides the count (1 = current thread).
pub fn runtime_builder() -> tokio::runtime::Builder {
    let threads = std::env::var("DELTALLM_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
}
