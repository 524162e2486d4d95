//! `wafer worker`: a runner in its own process. It pulls jobs of one lane, runs each in a
//! fresh sandbox of its own engine (built with the server's engine settings, so the server's
//! compiled code loads as is), heartbeats while a job runs, hands the end back and only then
//! acks the delivery. It exits after an idle time, so with no work no worker exists.
//!
//! Deliveries come from a [`Deliveries`] source: the embedded queue through the server's
//! internal API ([`RemoteQueue`]), or Redis directly ([`DirectQueue`]). Job records are the
//! server's: a worker starts and finishes jobs through the same internal API and never opens
//! the server's files except the content-addressed artifact directory.
//!
//! A worker holds its lane's credential; starting a job it claimed gets it that claim's
//! credential, with which it does everything else for that job (heartbeats, module, end,
//! ack). A dedicated runner holds only its claim's credential, and reaches the queue through
//! the server whatever the backend (see the gateway's `credentials`).

use crate::client::{Deliveries, DirectQueue, RemoteQueue, ServerClient};
use crate::executor::{Executor, Here};
use crate::vm::{self, VmOptions};
use crate::wire::{DeadRequest, FinishRequest, StartRequest};
use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use wafer_core::{ArtifactStore, Claim, Claimed, FsArtifactStore, Lane, Route, Secret};
use wafer_runner::{CompileMode, Runner, RunnerConfig};

/// How a worker is started.
#[derive(Debug)]
pub struct WorkerOptions {
    /// The server's base URL.
    pub server: String,
    /// The runner credential: a lane's, a claim's (a dedicated runner) or the runner key.
    pub token: Secret,
    /// The lane to serve.
    pub lane: Lane,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Exit after this long without work.
    pub idle: Duration,
    /// Exit after this many jobs (a dedicated runner takes one).
    pub max_jobs: Option<u64>,
    /// The artifact directory (the server's, on the same machine).
    pub artifacts_dir: PathBuf,
    /// Where the compile worker's files go, when code must be compiled here.
    pub scratch_dir: PathBuf,
    /// The `wafer` binary, to compile in an isolated child (None: in process).
    pub compile_program: Option<PathBuf>,
    /// The Redis URL, when the server's queue is Redis (from the environment).
    pub redis_url: Option<Secret>,
    /// A job claimed for this runner by the server (a dedicated runner): run it and exit.
    pub claim: Option<Claim>,
    /// Run the claimed job in a microVM of its own (the `vm` provisioner).
    pub vm: Option<VmOptions>,
}

fn now_ms() -> u64 {
    wafer_core::jobs::now_ms()
}

/// Runs a worker until it has been idle for its idle time (or ran its most jobs).
pub async fn serve(opts: WorkerOptions) -> anyhow::Result<()> {
    let server = Arc::new(ServerClient::new(&opts.server, opts.token)?);
    let setup = server.setup().await.context("fetching the runner setup")?;
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(
        FsArtifactStore::open(&opts.artifacts_dir)
            .with_context(|| format!("opening {}", opts.artifacts_dir.display()))?,
    );
    let compile = match &opts.compile_program {
        Some(p) => CompileMode::Worker {
            program: p.clone(),
            args: vec!["__compile".into()],
            timeout: Duration::from_millis(setup.compile_timeout_ms),
            memory_bytes: setup.compile_memory_mb << 20,
        },
        None => CompileMode::InProcess,
    };
    let runner = Arc::new(
        Runner::new(
            RunnerConfig {
                engine: setup.engine,
                hot_entries: setup.hot_modules,
                compile,
                scratch_dir: opts.scratch_dir.clone(),
            },
            artifacts.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    );
    if runner.fingerprint() != setup.fingerprint {
        tracing::warn!("this worker's engine differs from the server's: modules are recompiled");
    }
    let queue: Arc<dyn Deliveries> = match (&setup.redis_prefix, &opts.redis_url) {
        // A dedicated runner reaches the queue through the server: its credential is its
        // claim's, and it gets no queue URL.
        _ if opts.claim.is_some() => Arc::new(RemoteQueue),
        (None, _) => Arc::new(RemoteQueue),
        (Some(prefix), Some(url)) => Arc::new(DirectQueue(Arc::new(
            wafer_stores::RedisJobQueue::connect(
                url.expose(),
                prefix,
                setup.max_deliveries,
                setup.shares,
            )
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the Redis queue: {e}"))?,
        ))),
        (Some(_), None) => {
            anyhow::bail!("the server's queue is Redis: give its URL in WAFER_QUEUE_URL")
        }
    };
    let timing = Timing {
        lease: Duration::from_millis(setup.lease_ms.max(100)),
        heartbeat: Duration::from_millis(setup.heartbeat_ms.max(10)),
    };
    if let Some(claim) = &opts.claim {
        let executor: Box<dyn Executor> = match opts.vm.clone() {
            Some(vm) => Box::new(vm::InVm(vm)),
            None => Box::new(Here),
        };
        // A dedicated runner: the server claimed the job for it.
        tracing::info!(job = claim.job.id.as_str(), "dedicated runner started");
        run_one(
            &server,
            queue.as_ref(),
            &runner,
            claim,
            timing,
            Route::Dedicated,
            executor.as_ref(),
        )
        .await?;
        return Ok(());
    }
    let concurrency = opts.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let last_activity = Arc::new(AtomicU64::new(now_ms()));
    let mut taken = 0u64;
    tracing::info!(lane = opts.lane.as_str(), concurrency, "worker started");
    loop {
        if opts.max_jobs.is_some_and(|m| taken >= m) {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let running = concurrency - 1 - permits.available_permits();
        let idle_for =
            Duration::from_millis(now_ms().saturating_sub(last_activity.load(Ordering::Relaxed)));
        if running == 0 && idle_for >= opts.idle {
            break;
        }
        let wait = opts
            .idle
            .saturating_sub(idle_for)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let claimed = match queue.claim(&server, opts.lane, timing.lease, wait).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "claiming failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match claimed {
            None => {}
            Some((Claimed::Dead { job, deliveries }, _)) => {
                if let Err(e) = server.call_job(&job.id, &DeadRequest { deliveries }).await {
                    tracing::warn!(job = job.id.as_str(), error = %format!("{e:#}"), "recording a dead job failed");
                }
            }
            Some((Claimed::Job(claim), credential)) => {
                taken += 1;
                last_activity.store(now_ms(), Ordering::Relaxed);
                // With the claim's credential from the server, the job is started with it.
                let server = match credential {
                    Some(c) => Arc::new(server.scoped(c)),
                    None => server.clone(),
                };
                let (queue, runner, activity) =
                    (queue.clone(), runner.clone(), last_activity.clone());
                tokio::spawn(async move {
                    let ran = run_one(
                        &server,
                        queue.as_ref(),
                        &runner,
                        &claim,
                        timing,
                        Route::Worker,
                        &Here,
                    )
                    .await;
                    if let Err(e) = ran {
                        tracing::warn!(
                            job = claim.job.id.as_str(),
                            error = %format!("{e:#}"),
                            "job not finished here; its lease will run out"
                        );
                    }
                    activity.store(now_ms(), Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
    // Let running jobs end.
    let _all = permits.acquire_many(concurrency as u32).await?;
    tracing::info!(jobs = taken, "worker idle: exiting");
    Ok(())
}

#[derive(Clone, Copy)]
struct Timing {
    lease: Duration,
    heartbeat: Duration,
}

/// Starts, runs and finishes one delivered job.
async fn run_one(
    server: &ServerClient,
    queue: &dyn Deliveries,
    runner: &Runner,
    claim: &Claim,
    timing: Timing,
    route: Route,
    executor: &dyn Executor,
) -> anyhow::Result<()> {
    let id = claim.job.id.as_str();
    let started = server
        .call_job(
            &claim.job.id,
            &StartRequest {
                route,
                attempt: claim.delivery,
                claim: Some(claim.clone()),
            },
        )
        .await?;
    // Everything else for this job goes with the claim's own credential.
    let scoped;
    let server = match started.credential {
        Some(c) => {
            scoped = server.scoped(Secret::new(c));
            &scoped
        }
        None => server,
    };
    let Some(order) = started.order else {
        // It ended or was cancelled while it waited.
        queue.ack(server, claim).await?;
        return Ok(());
    };
    // Crash tests stop the worker here, as a runner dying mid-job would.
    wafer_core::crash_point("worker-running");
    let input = Bytes::from(
        base64::engine::general_purpose::STANDARD
            .decode(started.input_base64.as_bytes())
            .context("the job's input is not base64")?,
    );
    let span = tracing::info_span!("job", job = id, function = %order.function);
    let execution = executor.execute(server, runner, &order, input);
    let heartbeat = async {
        loop {
            tokio::time::sleep(timing.heartbeat).await;
            match queue.heartbeat(server, claim, timing.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(job = id, error = %format!("{e:#}"), "heartbeat failed"),
            }
        }
    };
    let began = Instant::now();
    let result = tokio::select! {
        r = execution.instrument(span) => r,
        () = heartbeat => {
            tracing::info!(job = id, "the job was cancelled or delivered again: stopped");
            return Ok(());
        }
    };
    let (end, output) = result?;
    tracing::debug!(
        job = id,
        status = end.status.as_str(),
        ms = began.elapsed().as_millis() as u64,
        "job ran"
    );
    let finished = server
        .call_job(
            &claim.job.id,
            &FinishRequest {
                end,
                output_base64: base64::engine::general_purpose::STANDARD.encode(&output),
            },
        )
        .await?;
    if !finished.stored {
        tracing::info!(
            job = id,
            "the job had already ended: this run's end was not kept"
        );
    }
    if !queue.ack(server, claim).await? {
        tracing::info!(
            job = id,
            delivery = claim.delivery,
            "the delivery is no longer this worker's: not acked"
        );
    }
    Ok(())
}
