//! Runners on demand: the server starts `wafer worker` child processes when jobs wait in the
//! worker lane, at most `jobs.workers` at once; each exits by itself after
//! `jobs.worker_idle_ms` without work, so an idle server runs nothing but itself (scale to
//! zero). Children die with the server (parent-death signal), and the embedded queue's
//! leases are released at the next start.

use crate::state::AppState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wafer_core::Lane;

/// How to start a runner process on this machine.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `wafer` binary.
    pub program: PathBuf,
    /// The server's base URL, as runners reach it.
    pub server_url: String,
}

/// Starts workers while jobs wait in the default lane, for as long as the process runs.
pub async fn supervise_workers(state: Arc<AppState>, launch: Launch) {
    let cfg = state.jobs.config().clone();
    if cfg.workers == 0 {
        return;
    }
    let per_worker = cfg.worker_concurrency.max(1) as u64;
    let mut quiet_until = Instant::now();
    loop {
        // Woken by an enqueue; the timer catches jobs whose runner died (lease ran out).
        let _ = tokio::time::timeout(Duration::from_secs(1), state.jobs.demand.notified()).await;
        if Instant::now() < quiet_until {
            continue;
        }
        let depth = match state.jobs.queue.len(Lane::Default).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue depth failed");
                continue;
            }
        };
        let wanted = (depth.div_ceil(per_worker) as usize).min(cfg.workers);
        while state.fleet.workers() < wanted {
            match spawn_worker(&state, &launch) {
                Ok(()) => {}
                Err(e) => {
                    // Do not spin on a launch that cannot work; try again shortly.
                    tracing::error!(error = %e, "starting a worker failed");
                    quiet_until = Instant::now() + Duration::from_secs(1);
                    break;
                }
            }
        }
    }
}

fn spawn_worker(state: &Arc<AppState>, launch: &Launch) -> std::io::Result<()> {
    let cfg = state.jobs.config();
    let data = &state.config.data_dir;
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.arg("worker")
        .arg("--server")
        .arg(&launch.server_url)
        .arg("--lane")
        .arg(Lane::Default.as_str())
        .arg("--concurrency")
        .arg(cfg.worker_concurrency.max(1).to_string())
        .arg("--idle-ms")
        .arg(cfg.worker_idle_ms.to_string())
        .arg("--artifacts-dir")
        .arg(data.join("artifacts"))
        .arg("--scratch-dir")
        .arg(data.join("scratch"));
    child_environment(&mut cmd, &worker_env(state, Lane::Default));
    let mut child = cmd.spawn()?;
    let fleet = state.clone();
    fleet.fleet.workers.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .set_runners("worker", fleet.fleet.workers() as i64);
    let pid = child.id();
    tracing::info!(pid, "worker started");
    tokio::spawn(async move {
        let status = child.wait().await;
        fleet.fleet.workers.fetch_sub(1, Ordering::Relaxed);
        fleet
            .metrics
            .set_runners("worker", fleet.fleet.workers() as i64);
        match status {
            Ok(s) if s.success() => tracing::info!(pid, "worker exited"),
            Ok(s) => tracing::warn!(pid, status = %s, "worker ended abnormally"),
            Err(e) => tracing::warn!(pid, error = %e, "waiting for a worker failed"),
        }
        // A job of a worker that died may wait for its lease; look again.
        fleet.jobs.demand.notify_one();
    });
    Ok(())
}

/// What a worker of `lane` needs in its environment: its lane's credential, and the queue
/// URL when the queue is Redis (a URL may hold a password: environment, never the command
/// line).
pub fn worker_env(state: &AppState, lane: Lane) -> Vec<(String, String)> {
    let mut env = vec![(
        "WAFER_RUNNER_TOKEN".to_owned(),
        state.jobs.runner_keys().lane(lane).expose().to_owned(),
    )];
    if state.config.queue.backend == crate::config::QueueBackend::Redis {
        env.push(("WAFER_QUEUE_URL".into(), state.config.queue.url.clone()));
    }
    env
}

/// Sets up a runner child: only `env`, logging settings and the crash point of crash tests
/// from the server's environment; no stdin or stdout; killed with the server.
pub fn child_environment(cmd: &mut tokio::process::Command, env: &[(String, String)]) {
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in ["WAFER_LOG", "RUST_LOG", "WAFER_CRASH_AT"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
