//! Serving the gateway: bind, serve, shut down gracefully.

use std::net::SocketAddr;

use deltallm_core::Gateway;
use tokio::net::TcpListener;

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
