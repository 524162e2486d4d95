//! The guest pool: a tokio runtime of its own on which every invocation runs, so guests that
//! spin until their deadline compete with each other for these threads and never for the
//! threads that serve the API (health, deploys, reads). Its threads run at a lower scheduling
//! priority, so the kernel prefers the control plane whenever both want a core.

use std::future::Future;
use tokio::runtime::Runtime;
use tokio::task::{JoinError, JoinHandle};

/// The runtime that runs guests.
pub struct GuestPool {
    runtime: Option<Runtime>,
}

impl GuestPool {
    /// A pool of `threads` workers (0: one per core) at nice value `nice` (0–19).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let nice = nice.clamp(0, 19);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wafer-guest")
            .enable_all()
            // A spinning guest is polled for a whole epoch tick before it yields, so the
            // scheduler's defaults (look at new tasks and timers every 61 polls) would let new
            // invocations, which arrive from the API's runtime, and expired sleeps wait for
            // 61 ticks. Look every other poll instead.
            .global_queue_interval(2)
            .event_interval(2)
            .on_thread_start(move || {
                if nice > 0 {
                    // SAFETY: on Linux, PRIO_PROCESS with who = 0 sets the calling thread's
                    // nice value only; failure leaves the default priority, which is harmless.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                    }
                }
            })
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `fut` on the pool. Dropping the returned future (the caller went away) aborts
    /// the task, so an abandoned invocation stops at its next yield.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.runtime.as_ref().expect("pool is running").spawn(fut);
        AbortOnDrop(handle).await
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // The pool may be dropped from inside another runtime, where a blocking shutdown
        // would panic; running guests are abandoned, as at process exit.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A join handle that aborts its task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_on_its_own_threads_and_aborts_abandoned_work() {
        let pool = GuestPool::new(1, 10).unwrap();
        let name = pool
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("wafer-guest"));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let abandoned = pool.run(async move {
            let _keep = tx;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        // Poll once, then drop: the task must be aborted, dropping the sender.
        let _ = tokio::time::timeout(Duration::from_millis(20), abandoned).await;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the abandoned task was aborted")
            .unwrap_err();
    }
}
