//! Serving the gateway: bind, serve, shut down gracefully.

use std::net::SocketAddr;

use deltallm_core::Gateway;
use deltallm_domain::SecretString;
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

/// Flush pending spend records before exit and report any that were lost.
pub async fn drain(gateway: &Gateway) {
    gateway.flush_spend().await;
    let (dropped, failed) = (gateway.spend_dropped(), gateway.spend_failed());
    if dropped + failed > 0 {
        tracing::warn!(
            queue_full = dropped,
            write_failed = failed,
            "spend records this process could not store (totals since start)"
        );
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

/// How often the embedded default checks its salt key file.
const SALT_KEY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// On the embedded default, follow `rotate-key`: when `<data_dir>/salt_key`
/// holds a new key, seal with it from then on (the old keys stay readable)
/// and rebuild the registry, so admin writes keep working with no restart.
pub fn watch_salt_key(gateway: &Gateway, watch: Option<crate::keys::SaltKeyWatch>) {
    let Some(mut watch) = watch else { return };
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SALT_KEY_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(text) = tokio::fs::read_to_string(&watch.file).await else { continue };
            let on_disk = text.trim();
            if on_disk.is_empty() || on_disk == watch.current.expose() {
                continue;
            }
            let new = SecretString::new(on_disk);
            let mut previous = vec![watch.current.clone()];
            previous.extend(watch.previous.iter().filter(|k| k.expose() != on_disk).cloned());
            let ring = match crate::key_ring(&new, &previous) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %watch.file.display(), error = %e, "salt key file changed but is not usable; keeping the current key");
                    continue;
                }
            };
            let key_id = ring.current_id().to_owned();
            gateway.store().replace_key_ring(ring);
            watch.previous = previous;
            watch.current = new;
            match gateway.reload().await {
                Ok(()) => tracing::info!(key_id = %key_id, "salt key rotated on disk; sealing with the new key"),
                Err(e) => tracing::warn!(error = %e, "registry rebuild after a salt key change failed"),
            }
        }
    });
}
