//! The HTTP/1 server loop: accepts connections under a cap, bounds how long a client may take
//! to send a request head (which also ends idle keep-alive connections), and shuts down within
//! a deadline.
//!
//! `axum::serve` exposes none of these bounds, so the loop is written here on hyper's own
//! connection builder. A client beyond the connection cap is closed at once, before it can cost
//! more than the accepted socket; the process's open-file limit is raised at start and the cap
//! kept below it, so accepting never runs out of descriptors.

use crate::metrics::Metrics;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Descriptors kept free for everything that is not a client connection (the data store,
/// artifacts, compile workers, logs).
const RESERVED_FDS: u64 = 256;

/// The bounds of the server loop.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, counted from the moment the
    /// connection waits for one: a new connection that sends nothing, a trickled head and an
    /// idle keep-alive connection are all closed after it.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown begins; then the server returns.
    pub shutdown_grace: Duration,
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit, so a
/// burst of clients meets the connection cap rather than `EMFILE`.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// The connection cap that fits under an open-file limit of `fd_limit`.
pub fn connection_cap(configured: usize, fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(RESERVED_FDS).max(16);
    configured.clamp(1, room.min(usize::MAX as u64) as usize)
}

/// Serves `router` on `listener` until `shutdown` fires; then stops accepting (new
/// connections are refused), lets in-flight requests finish and closes idle connections,
/// returning when all are done or `shutdown_grace` has passed, whichever is first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning; per
                    // connection errors (reset before accept) need no pause.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(open);
            drop(slot);
        });
    }
    // Closing the listener makes new connection attempts fail at once.
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!(
            grace_ms = limits.shutdown_grace.as_millis() as u64,
            "shutdown deadline passed with requests still in flight"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_under_the_descriptor_limit() {
        assert_eq!(connection_cap(4096, 1_048_576), 4096);
        assert_eq!(connection_cap(4096, 1024), 1024 - RESERVED_FDS as usize);
        assert_eq!(connection_cap(4096, 100), 16);
        assert_eq!(connection_cap(0, 1024), 1);
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let soft = raise_fd_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
