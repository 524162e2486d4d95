//! The inline lanes: jobs run in the server's own runner pool. A dispatcher per lane claims
//! jobs, admits each into the memory budget (or puts it back for a moment when its tenant's
//! share is in use), runs it through the same [`wafer_worker::execute_order`] as every other
//! route while heartbeating the claim, stores the end and only then acks.

use crate::execute;
use crate::jobs;
use crate::state::AppState;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use wafer_core::{
    Claim, Claimed, FunctionRecord, JobEnd, JobRecord, Lane, Problem, Route, VersionRecord,
};
use wafer_worker::end::{end_of, failed, function_deleted};

/// Starts the dispatchers of the inline lanes and the sweeper of expired jobs.
pub fn start(state: &Arc<AppState>) {
    let per_lane = state
        .jobs
        .config()
        .inline_per_lane(state.config.max_inflight);
    for lane in state.jobs.inline_lanes() {
        let permits = Arc::new(Semaphore::new(per_lane));
        tokio::spawn(dispatch(state.clone(), lane, permits));
    }
    let sweeper = state.clone();
    tokio::spawn(async move { sweeper.jobs.sweep_expired().await });
}

/// Claims the jobs of `lane` and runs each in the server's pool, at most `permits` at once.
async fn dispatch(state: Arc<AppState>, lane: Lane, permits: Arc<Semaphore>) {
    let jobs = &state.jobs;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match jobs
            .claim_waiting(lane, jobs.lease(), Duration::from_secs(30))
            .await
        {
            Ok(Some(Claimed::Job(claim))) => {
                let state = state.clone();
                tokio::spawn(async move {
                    run_claimed(&state, claim).await;
                    drop(permit);
                });
            }
            Ok(Some(Claimed::Dead { job, deliveries })) => {
                drop(permit);
                state.jobs.bury(&job.id, deliveries).await;
            }
            Ok(None) => drop(permit),
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e.detail, ?lane, "claiming a job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How long a job the server could not admit (its tenant's memory share is in use) stays in
/// the queue before it may be claimed again.
const READMIT_DELAY: Duration = Duration::from_millis(250);

/// Runs one claimed job: admits it, marks it running, runs it while heartbeating, stores the
/// end and acks the claim. A cancel or a lost lease stops the guest. A job its tenant's share
/// of the server's memory has no room for now goes back to the queue for a moment instead of
/// waiting here, so it never holds one of the lane's slots while it waits.
async fn run_claimed(state: &AppState, claim: Claim) {
    let jobs = &state.jobs;
    let id = claim.job.id.clone();
    let ready = match admit(state, &claim).await {
        Admit::Now(r) => r,
        Admit::Later => {
            if let Err(e) = jobs
                .queue
                .release(&claim, jobs.lease(), READMIT_DELAY)
                .await
            {
                tracing::warn!(job = id.as_str(), error = %e, "releasing a job failed");
            }
            return;
        }
    };
    let rec = match jobs.start(&id, Route::Inline, claim.delivery).await {
        Ok(Some(rec)) => rec,
        Ok(None) => {
            // Cancelled (or ended) while it waited: nothing to run.
            let _ = jobs.ack(&claim).await;
            return;
        }
        Err(e) => {
            // The lease runs out and the job is delivered again.
            tracing::warn!(job = id.as_str(), error = %e.detail, "starting a job failed");
            return;
        }
    };
    // Crash tests stop the runner here, as a runner dying mid-job would.
    wafer_core::crash_point("job-running");
    let running = jobs.running(&id);
    let heartbeat = async {
        let lease = jobs.lease();
        loop {
            tokio::time::sleep(jobs.heartbeat()).await;
            match jobs.queue.heartbeat(&claim, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(job = id.as_str(), error = %e, "heartbeat failed"),
            }
        }
    };
    let outcome = tokio::select! {
        end = execute_job(state, &rec, ready) => Some(end),
        () = running.cancelled() => None,
        () = heartbeat => None,
    };
    drop(running);
    let Some((end, output)) = outcome else {
        return;
    };
    match jobs.finish(&id, end, output).await {
        Ok(_) => {
            if let Err(e) = jobs.ack(&claim).await {
                tracing::warn!(job = id.as_str(), error = %e, "acking a job failed");
            }
        }
        Err(e) => {
            tracing::warn!(job = id.as_str(), error = %e.detail, "storing a job's end failed")
        }
    }
}

/// Whether a claimed job may run now.
enum Admit {
    /// Yes: with its function, version and place in the tenant's memory share, or None when
    /// the job is to fail anyway (its function is gone, or it can never fit) and
    /// `execute_job` says why.
    Now(Option<Box<Ready>>),
    /// Not now: the tenant's share is in use.
    Later,
}

/// A job admitted to run: what it runs, and its place in the memory budget.
struct Ready {
    function: FunctionRecord,
    version: VersionRecord,
    _admitted: crate::admission::Admitted,
}

/// Takes a place in the server's memory budget for the job of `claim`, without waiting.
async fn admit(state: &AppState, claim: &Claim) -> Admit {
    let rec = match state.jobs.store.get(&claim.job.id).await {
        Ok(Some(rec)) => rec,
        _ => return Admit::Now(None),
    };
    let Ok(Some((function, version))) = jobs::version_of(state.meta.as_ref(), &rec).await else {
        return Admit::Now(None);
    };
    if state.admission.check_fits(version.spec.memory_mb).is_err() {
        return Admit::Now(None);
    }
    match state.admission.admit(&rec.tenant, version.spec.memory_mb) {
        Ok(a) => Admit::Now(Some(Box::new(Ready {
            function,
            version,
            _admitted: a,
        }))),
        Err(_) => Admit::Later,
    }
}

/// Runs a job's function on its input in the server's pool, as `ready` admitted it (None:
/// it fails before it runs, saying why).
async fn execute_job(
    state: &AppState,
    rec: &JobRecord,
    ready: Option<Box<Ready>>,
) -> (JobEnd, Bytes) {
    let Some(ready) = ready else {
        return not_admitted(state, rec).await;
    };
    let (function, version) = (&ready.function, &ready.version);
    let input = match state.jobs.store.input(&rec.id).await {
        Ok(Some(b)) => b,
        Ok(None) => Bytes::new(),
        Err(e) => return failed(Problem::internal(e), String::new()),
    };
    let order = state.jobs.order(rec, function, version, Route::Inline);
    let span = tracing::info_span!(
        "job",
        tenant = %function.tenant,
        function = %function.name,
        version = version.version,
        job = rec.id.as_str(),
    );
    let started = Instant::now();
    let result = wafer_worker::execute_order(&state.runner, &order, input)
        .instrument(span)
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cold = matches!(&result, Ok((_, true)));
    let fuel = result.as_ref().map_or(0, |(o, _)| o.fuel);
    let (end, output) = end_of(result.map(|(o, _)| o));
    let slug = end
        .error
        .as_ref()
        .and_then(Problem::slug_of)
        .unwrap_or("ok");
    state
        .metrics
        .record(function.name.as_str(), slug, seconds, fuel, cold);
    if !end.stderr.is_empty() || slug != "ok" {
        execute::keep_log(
            state,
            function,
            version,
            rec.id.as_str(),
            slug,
            started,
            end.stderr.as_bytes(),
        );
    }
    (end, output)
}

/// Why a job that [`admit`] found no way to run fails: its function is gone, or it can
/// never fit a tenant's share of the memory budget.
async fn not_admitted(state: &AppState, rec: &JobRecord) -> (JobEnd, Bytes) {
    let resolved = match jobs::version_of(state.meta.as_ref(), rec).await {
        Ok(r) => r,
        Err(e) => return failed(e.into(), String::new()),
    };
    let Some((_, version)) = resolved else {
        return failed(function_deleted(rec), String::new());
    };
    // One that can never be admitted (its version needs more than a tenant's share) fails.
    if let Err(e) = state.admission.check_fits(version.spec.memory_mb) {
        return failed(e, String::new());
    }
    failed(
        Problem::new(
            503,
            "overloaded",
            "Overloaded",
            "the job could not be given a place in the server's memory budget",
        ),
        String::new(),
    )
}
