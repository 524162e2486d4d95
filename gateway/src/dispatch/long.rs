//! The long lane: a dedicated runner per job, at most `jobs.long.max_runners` at once and
//! `jobs.long.max_per_tenant` per tenant, so a flood of long jobs neither takes every runner
//! from other tenants nor touches the fast and default lanes, which have runners of their own.
//!
//! The dispatcher claims a long job and holds its claim (heartbeating) while a provisioner
//! launches a runner and hands it the claim. The per-tenant limit is the tenant's share of
//! the long lane, which the queue applies when claiming: a job whose tenant is at its limit
//! stays in the queue, unclaimed, until one of that tenant's runners ends. A runner that does not start its job within
//! `jobs.long.start_timeout_ms` is torn down and the job fails with the reason; one that dies
//! mid-job loses its lease and the job is delivered again (dead after `max_deliveries`).

use crate::dispatch::provision::{LaunchRequest, Provisioner, RunnerHandle};
use crate::dispatch::workers::Launch;
use crate::state::AppState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use wafer_core::{Claim, Claimed, JobEnd, JobStatus, Lane, Problem, Route};

/// Runs the long lane for as long as the process runs.
pub async fn dispatch(state: Arc<AppState>, launch: Launch, provisioner: Arc<dyn Provisioner>) {
    let cfg = state.jobs.config().long.clone();
    let slots = Arc::new(Semaphore::new(cfg.max_runners.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let claimed = state
            .jobs
            .claim_waiting(Lane::Long, state.jobs.lease(), Duration::from_secs(1))
            .await;
        let claim = match claimed {
            Ok(Some(Claimed::Job(c))) => c,
            Ok(Some(Claimed::Dead { job, deliveries })) => {
                state.jobs.bury(&job.id, deliveries).await;
                continue;
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e.detail, "claiming a long job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (state, launch, provisioner) = (state.clone(), launch.clone(), provisioner.clone());
        tokio::spawn(async move {
            run_dedicated(&state, &launch, provisioner.as_ref(), claim).await;
            drop(slot);
            state.jobs.demand.notify_one();
        });
    }
}

/// Fails a job that a dedicated runner could not run, and releases its claim.
async fn give_up(state: &AppState, claim: &Claim, slug: &'static str, detail: String) {
    tracing::warn!(job = claim.job.id.as_str(), %detail, "long job failed before it started");
    let end = JobEnd {
        status: JobStatus::Failed,
        error: Some(Problem::new(503, slug, "Dedicated runner unavailable", detail).body(None)),
        result: None,
        stderr: String::new(),
        runner: None,
    };
    let _ = state
        .jobs
        .finish(&claim.job.id, end, bytes::Bytes::new())
        .await;
    let _ = state.jobs.ack(claim).await;
}

/// Launches a runner for one claimed job and sees it through: it must start within the
/// start timeout; then it runs the job itself; it is torn down after.
async fn run_dedicated(
    state: &Arc<AppState>,
    launch: &Launch,
    provisioner: &dyn Provisioner,
    claim: Claim,
) {
    let id = claim.job.id.clone();
    // Cancelled or ended while it waited: nothing to launch.
    match state.jobs.store.get(&id).await {
        Ok(Some(rec)) if !rec.status.is_terminal() => {}
        _ => {
            let _ = state.jobs.ack(&claim).await;
            return;
        }
    }
    let cfg = state.jobs.config().long.clone();
    let data = &state.config.data_dir;
    let command: Vec<String> = vec![
        launch.program.to_string_lossy().into_owned(),
        "worker".into(),
        "--server".into(),
        launch.server_url.clone(),
        "--lane".into(),
        "long".into(),
        "--max-jobs".into(),
        "1".into(),
        "--artifacts-dir".into(),
        data.join("artifacts").to_string_lossy().into_owned(),
        "--scratch-dir".into(),
        data.join("scratch").to_string_lossy().into_owned(),
    ];
    // The runner gets its claim's credential and nothing else: no runner key, no queue URL
    // (it heartbeats and acks through the server).
    let credential = state
        .jobs
        .runner_keys()
        .claim(&claim.job.id, claim.delivery);
    let mut env = vec![(
        "WAFER_RUNNER_TOKEN".to_owned(),
        credential.expose().to_owned(),
    )];
    env.push((
        "WAFER_CLAIM".into(),
        serde_json::to_string(&claim).expect("claims serialize"),
    ));
    env.push(("WAFER_SERVER_URL".into(), launch.server_url.clone()));
    let req = LaunchRequest {
        job: id.clone(),
        command,
        env,
    };
    state.fleet.dedicated.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .set_runners("dedicated", state.fleet.dedicated() as i64);
    let mut events = state.jobs.watch(&id);
    let handle: Option<RunnerHandle> = match provisioner.launch(&req).await {
        Ok(h) => {
            tracing::info!(job = id.as_str(), provisioner = provisioner.kind(), handle = %h.0, "dedicated runner launched");
            Some(h)
        }
        Err(e) => {
            give_up(
                state,
                &claim,
                "runner-launch-failed",
                format!(
                    "the {} provisioner could not launch a dedicated runner: {e}",
                    provisioner.kind()
                ),
            )
            .await;
            None
        }
    };
    if let Some(handle) = handle {
        watch(
            state,
            provisioner,
            &handle,
            &claim,
            &mut events,
            cfg.start_timeout_ms,
        )
        .await;
        if let Err(e) = provisioner.teardown(&handle).await {
            tracing::warn!(job = id.as_str(), error = %e, "tearing down a dedicated runner failed");
        }
    }
    state.fleet.dedicated.fetch_sub(1, Ordering::Relaxed);
    state
        .metrics
        .set_runners("dedicated", state.fleet.dedicated() as i64);
}

/// Heartbeats the claim until the runner starts the job (or fails it after the start
/// timeout), then waits for the job to end or to be delivered again elsewhere.
async fn watch(
    state: &AppState,
    provisioner: &dyn Provisioner,
    handle: &RunnerHandle,
    claim: &Claim,
    events: &mut crate::jobs::JobWatch,
    start_timeout_ms: u64,
) {
    let id = &claim.job.id;
    let started_by_runner = |r: &wafer_core::JobRecord| {
        r.status.is_terminal()
            || (r.status == JobStatus::Running
                && r.route == Route::Dedicated
                && r.attempts >= claim.delivery)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(start_timeout_ms);
    loop {
        match state.jobs.store.get(id).await {
            Ok(Some(r)) if started_by_runner(&r) => break,
            Ok(Some(_)) => {}
            _ => return,
        }
        if tokio::time::Instant::now() >= deadline {
            give_up(
                state,
                claim,
                "runner-start-timeout",
                format!(
                    "the dedicated runner did not start the job within {start_timeout_ms} ms \
                     (jobs.long.start_timeout_ms)"
                ),
            )
            .await;
            return;
        }
        let step = tokio::time::Instant::now() + state.jobs.heartbeat();
        events.next_change(step.min(deadline)).await;
        if let Ok(false) = state.jobs.queue.heartbeat(claim, state.jobs.lease()).await {
            // Cancelled before it started: the runner finds nothing to run.
            return;
        }
    }
    // Running on the runner, which heartbeats itself: wait for the end, for the runner to
    // go away (its lease then runs out and the job is delivered again), or, when the
    // provisioner cannot tell, for the job's timeout to pass.
    let lease = state.jobs.lease();
    loop {
        match state.jobs.store.get(id).await {
            Ok(Some(r)) if !r.status.is_terminal() && r.attempts <= claim.delivery => {
                let overdue = r.started_ms.is_some_and(|s| {
                    wafer_core::jobs::now_ms()
                        > s + r.timeout_ms + 2 * lease.as_millis() as u64 + 30_000
                });
                if overdue || provisioner.alive(handle).await == Some(false) {
                    return;
                }
            }
            _ => return,
        }
        let step = tokio::time::Instant::now() + Duration::from_secs(1);
        events.next_change(step).await;
    }
}
