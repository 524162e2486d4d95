//! Jobs: asynchronous invocations. A submission is stored ([`JobStore`]) and queued
//! ([`JobQueue`]) before the client gets its 202, so no accepted job is lost to a crash
//! ([`submit`]); runners claim jobs by lane, heartbeat the claim while the guest runs and ack
//! it only after the end is stored ([`Jobs::finish`]). Runners that die lose their lease and
//! the job is delivered again; one that dies on every delivery ends `dead` ([`Jobs::bury`]).
//! Where a job runs is `crate::dispatch`'s business.
//!
//! Status changes wake the watchers of that job only ([`JobWatch`], a watch channel per job
//! that someone waits on), which long polls (`?wait=`) and the event stream hold; waits are
//! bounded per tenant and in all ([`Jobs::start_wait`]). Cancelling a running job interrupts
//! its guest.
//!
//! This is domain code: it answers with values and [`Problem`]s, and the API turns them into
//! responses.

pub mod credentials;
pub mod fleet;
pub mod lanes;
pub mod submit;
pub mod view;
mod watch;
pub mod webhooks;

pub use submit::{Accepted, Submission};
pub use watch::{JobWatch, WaitSlot};
use watch::{WaitCounts, Watchers};

use crate::config::JobsConfig;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use wafer_core::{
    Claim, Claimed, FunctionRecord, JobEnd, JobId, JobQueue, JobRecord, JobStatus, JobStore, Lane,
    Problem, Route, Secret, TenantId, VersionRecord, VersionRef,
};
use wafer_worker::end::{failed, function_deleted};
use wafer_worker::{OutputCaps, WorkOrder};

/// The job machinery shared by handlers and dispatchers.
pub struct Jobs {
    /// Job records, inputs and outputs.
    pub store: Arc<dyn JobStore>,
    /// Which job runs next.
    pub queue: Arc<dyn JobQueue>,
    config: JobsConfig,
    /// The data directory, whose disk keeps `jobs.min_free_disk_mb` free.
    data_dir: std::path::PathBuf,
    /// Per job with someone waiting on it: a counter of its changes.
    watchers: Watchers,
    /// MiB of submission bodies being read and stored at once (`jobs.submit_buffer_mb`).
    submit_room: Arc<Semaphore>,
    /// Waits under way (long polls and event streams): per tenant, and in all.
    waits: Arc<Mutex<WaitCounts>>,
    running: Mutex<HashMap<JobId, CancellationToken>>,
    wake: HashMap<Lane, Notify>,
    /// Signalled on every enqueue, for whoever starts runners on demand.
    pub demand: Notify,
    runner_keys: crate::jobs::credentials::RunnerKeys,
    metrics: Arc<crate::metrics::Metrics>,
    /// Duration estimates per function version.
    pub estimates: crate::jobs::lanes::Estimates,
    webhooks: Arc<crate::jobs::webhooks::Webhooks>,
    /// The caps on a job's output (`functions.max_*`).
    caps: OutputCaps,
    /// The engine's memory ceiling, MiB, which no job's memory passes.
    max_memory_mb: u64,
}

impl Jobs {
    /// Jobs on `store` and `queue`; runners in other processes present `runner_token`.
    /// Ends are counted in `metrics`; orders cap a job's output at `caps` and its memory at
    /// `max_memory_mb`. Fails on webhook settings that cannot work.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        config: JobsConfig,
        data_dir: std::path::PathBuf,
        runner_token: Secret,
        metrics: Arc<crate::metrics::Metrics>,
        caps: OutputCaps,
        max_memory_mb: u64,
    ) -> Result<Self, String> {
        let webhooks = Arc::new(crate::jobs::webhooks::Webhooks::new(&config)?);
        let submit_mb = config.submit_buffer_mb.clamp(1, 1 << 30) as usize;
        Ok(Self {
            store,
            queue,
            config,
            data_dir,
            watchers: Default::default(),
            waits: Default::default(),
            submit_room: Arc::new(Semaphore::new(submit_mb)),
            running: Mutex::new(HashMap::new()),
            wake: [Lane::Fast, Lane::Default, Lane::Long]
                .into_iter()
                .map(|l| (l, Notify::new()))
                .collect(),
            demand: Notify::new(),
            runner_keys: crate::jobs::credentials::RunnerKeys::new(runner_token),
            metrics,
            estimates: Default::default(),
            webhooks,
            caps,
            max_memory_mb,
        })
    }

    /// The lanes the server's own pool serves: the fast lane, and the default lane when no
    /// workers are configured.
    pub fn inline_lanes(&self) -> Vec<Lane> {
        match self.config.workers {
            0 => vec![Lane::Fast, Lane::Default],
            _ => vec![Lane::Fast],
        }
    }

    /// The route jobs of `lane` take.
    pub fn route_of(&self, lane: Lane) -> Route {
        match lane {
            Lane::Long => Route::Dedicated,
            l if self.inline_lanes().contains(&l) => Route::Inline,
            _ => Route::Worker,
        }
    }

    /// Starts delivering the webhook of an ended job, if it has one.
    fn notify_webhook(&self, rec: &JobRecord) {
        if rec.webhook.is_some() {
            tokio::spawn(crate::jobs::webhooks::deliver(
                self.webhooks.clone(),
                self.store.clone(),
                rec.id.clone(),
            ));
        }
    }

    /// Resumes webhook deliveries that were pending when the server stopped.
    pub async fn resume_webhooks(&self) -> anyhow::Result<usize> {
        let pending = self.store.pending_webhooks().await?;
        for id in &pending {
            tokio::spawn(crate::jobs::webhooks::deliver(
                self.webhooks.clone(),
                self.store.clone(),
                id.clone(),
            ));
        }
        Ok(pending.len())
    }

    /// The runner key and the credentials runners in other processes get from it.
    pub fn runner_keys(&self) -> &crate::jobs::credentials::RunnerKeys {
        &self.runner_keys
    }

    /// How often a runner heartbeats a running job: often enough that a cancel reaches it
    /// within about a second, and at least three times per lease.
    pub fn heartbeat(&self) -> Duration {
        (self.lease() / 3).min(Duration::from_secs(1))
    }

    /// The next job of `lane`, waiting up to `wait` for one to be queued.
    pub async fn claim_waiting(
        &self,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claimed>, Problem> {
        let deadline = tokio::time::Instant::now() + wait;
        if self.queue.blocks() {
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // In steps of a second, so leases that run out are found meanwhile.
                let step = left.min(Duration::from_secs(1));
                let claimed = self
                    .queue
                    .claim_wait(lane, lease, step)
                    .await
                    .map_err(Problem::internal)?;
                if claimed.is_some() || left <= step {
                    return Ok(claimed);
                }
            }
        }
        loop {
            // Registered before looking, so an enqueue in between is not missed.
            let notified = self.wake[&lane].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self
                .queue
                .claim(lane, lease)
                .await
                .map_err(Problem::internal)?
            {
                return Ok(Some(c));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Leases that run out signal nothing: look again at least every second.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), notified).await;
        }
    }

    /// Marks a job running on `route` for delivery `attempt`; None when it must not run.
    pub async fn start(
        &self,
        id: &JobId,
        route: Route,
        attempt: u32,
    ) -> Result<Option<JobRecord>, Problem> {
        let rec = self
            .store
            .start(id, route, attempt)
            .await
            .map_err(Problem::internal)?;
        if rec.is_some() {
            self.publish(id);
        }
        Ok(rec)
    }

    /// Stores a job's end; false when it had already ended.
    pub async fn finish(&self, id: &JobId, end: JobEnd, output: Bytes) -> Result<bool, Problem> {
        // An output the disk has no room for is not written (a write that fails on a full
        // disk would leave the store unusable): the job fails, saying why.
        let (end, output) = match crate::disk::room(
            &self.data_dir,
            output.len() as u64,
            self.config.min_free_disk_mb,
        ) {
            Err(e) if !output.is_empty() => {
                tracing::error!(
                    job = id.as_str(),
                    bytes = output.len(),
                    "a job's result does not fit on the disk: the job fails"
                );
                let e = e.with("result_bytes", output.len());
                (
                    JobEnd {
                        status: JobStatus::Failed,
                        error: Some(e.body(None)),
                        result: None,
                        stderr: end.stderr,
                        runner: end.runner,
                    },
                    Bytes::new(),
                )
            }
            _ => (end, output),
        };
        let status = end.status;
        let ended = self
            .store
            .finish(id, end, output, self.ttl())
            .await
            .map_err(Problem::internal)?;
        let stored = ended.is_some();
        if let Some(rec) = ended {
            self.notify_webhook(&rec);
            if let (Some(start), Some(end)) = (rec.started_ms, rec.finished_ms)
                && matches!(rec.status, JobStatus::Succeeded | JobStatus::Failed)
            {
                self.estimates.record(
                    (rec.function.to_string(), rec.incarnation, rec.version),
                    end.saturating_sub(start),
                );
            }
            self.publish(id);
            self.metrics.job_finished(status.as_str());
        }
        Ok(stored)
    }

    /// Fails a job whose function was deleted after it was submitted.
    pub async fn fail_deleted(&self, rec: &JobRecord) -> Result<(), Problem> {
        let (end, output) = failed(function_deleted(rec), String::new());
        self.finish(&rec.id, end, output).await.map(|_| ())
    }

    /// The work order of job `rec`, which runs `version` of `function` on `route`: the
    /// version's limits, and on a dedicated runner (the long lane) at least the long lane's
    /// fuel and memory, within the engine's ceiling. The one place an order is made, for
    /// every route.
    pub fn order(
        &self,
        rec: &JobRecord,
        function: &FunctionRecord,
        version: &VersionRecord,
        route: Route,
    ) -> WorkOrder {
        let mut order = WorkOrder::new(rec, function, version, self.caps);
        if route == Route::Dedicated {
            let long = &self.config.long;
            order.fuel = order.fuel.max(long.fuel);
            order.memory_mb = order.memory_mb.max(long.memory_mb).min(self.max_memory_mb);
        }
        order
    }

    /// Marks a job dead: every delivery ended with its runner gone.
    pub async fn bury(&self, id: &JobId, deliveries: u32) {
        let detail = format!(
            "the job's runner stopped without a result on each of {deliveries} deliveries \
             (jobs.max_deliveries); the job is not retried"
        );
        tracing::warn!(job = id.as_str(), deliveries, "job dead-lettered");
        let end = JobEnd {
            status: JobStatus::Dead,
            error: Some(
                Problem::new(502, "job-dead", "Job dead", detail)
                    .with("deliveries", deliveries)
                    .body(None),
            ),
            result: None,
            stderr: String::new(),
            runner: None,
        };
        if let Err(e) = self.finish(id, end, Bytes::new()).await {
            tracing::warn!(error = %e.detail, "recording a dead job failed");
        }
    }

    /// Removes ended jobs whose time ran out, every `sweep_interval_ms`, for as long as the
    /// process runs.
    pub async fn sweep_expired(&self) {
        let every = Duration::from_millis(self.config.sweep_interval_ms.max(10));
        loop {
            tokio::time::sleep(every).await;
            loop {
                match self
                    .store
                    .purge_expired(wafer_core::jobs::now_ms(), 1000)
                    .await
                {
                    Ok(1000) => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(removed = n, "expired jobs removed");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "removing expired jobs failed");
                        break;
                    }
                }
            }
        }
    }

    /// Registers a job running in the server's pool, whose guest a cancel interrupts; it is
    /// removed when the returned guard drops.
    pub fn running(&self, id: &JobId) -> Running<'_> {
        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("running jobs")
            .insert(id.clone(), token.clone());
        Running {
            jobs: self,
            id: id.clone(),
            token,
        }
    }

    /// The settings.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.ttl_s)
    }

    /// How long a runner holds a job without a heartbeat.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.config.lease_ms.max(100))
    }

    /// Wakes whoever waits on job `id`, and nobody else.
    fn publish(&self, id: &JobId) {
        self.watchers.publish(id);
    }

    /// Room for a submission body of at most `most` bytes (`declared` when the request says
    /// how long it is): MiB of `jobs.submit_buffer_mb`, waited for up to the body timeout,
    /// then 503.
    pub async fn submit_room(
        &self,
        declared: Option<usize>,
        most: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        let declared = declared.unwrap_or(most).min(most);
        // The body, and about as much again for the input taken out of it.
        let mb = (declared.saturating_mul(2) >> 20) as u32 + 1;
        let mb = mb.min(self.config.submit_buffer_mb.max(1) as u32);
        let wait = Duration::from_millis(self.config.submit_wait_ms);
        match tokio::time::timeout(wait, self.submit_room.clone().acquire_many_owned(mb)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Problem::overloaded(format!(
                "submissions being read hold the {} MiB they may (jobs.submit_buffer_mb)",
                self.config.submit_buffer_mb
            ))),
        }
    }

    /// A wait of `tenant`'s (a long poll or an event stream), held until it is dropped; 429
    /// with Retry-After when the tenant, or the server, has as many under way as it may.
    pub fn start_wait(&self, tenant: &TenantId) -> Result<WaitSlot, Problem> {
        let mut waits = self.waits.lock().expect("waits");
        let total = waits.total;
        let mine = waits.per_tenant.get(tenant).copied().unwrap_or(0);
        let (most, per_tenant) = (self.config.max_waits, self.config.max_waits_per_tenant);
        if total >= most || mine >= per_tenant {
            let which = if mine >= per_tenant {
                format!("this tenant has {per_tenant} waits under way (jobs.max_waits_per_tenant)")
            } else {
                format!("the server has {most} waits under way (jobs.max_waits)")
            };
            let mut e = Problem::new(
                429,
                "too-many-waits",
                "Too many waits",
                format!("{which}: ask again without ?wait, or later"),
            );
            e.retry_after = Some(1);
            return Err(e.with("retry_after", 1));
        }
        *waits.per_tenant.entry(tenant.clone()).or_default() += 1;
        waits.total += 1;
        Ok(WaitSlot {
            waits: self.waits.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Acks `claim` (its job's end is stored) and wakes its lane's claimers: the tenant's
    /// share has room again.
    pub async fn ack(&self, claim: &Claim) -> Result<bool, wafer_core::QueueError> {
        let acked = self.queue.ack(claim).await?;
        if let Some(n) = self.wake.get(&claim.job.lane) {
            n.notify_waiters();
        }
        Ok(acked)
    }

    /// Puts a stored job in its queue and wakes its lane.
    async fn enqueue(&self, rec: &JobRecord) -> Result<(), Problem> {
        self.queue
            .enqueue(rec.queued())
            .await
            .map_err(Problem::internal)?;
        if let Some(n) = self.wake.get(&rec.lane) {
            n.notify_waiters();
        }
        self.demand.notify_one();
        Ok(())
    }

    /// Makes sure every job that has not ended is queued (after a crash between storing a
    /// job and queueing it, or a restart).
    pub async fn requeue_unfinished(&self) -> anyhow::Result<usize> {
        let unfinished = self.store.unfinished().await?;
        for job in &unfinished {
            self.queue.enqueue(job.clone()).await?;
        }
        Ok(unfinished.len())
    }

    /// Cancels a job of its owner: a queued job leaves the queue, a running one is
    /// interrupted. Returns the record and whether it was cancelled by this call.
    pub async fn cancel(&self, id: &JobId) -> Result<Option<(JobRecord, bool)>, Problem> {
        let outcome = self
            .store
            .cancel(id, self.ttl())
            .await
            .map_err(Problem::internal)?;
        if let Some((rec, true)) = &outcome {
            self.metrics.job_finished(JobStatus::Cancelled.as_str());
            self.notify_webhook(rec);
            self.queue.cancel(id).await.map_err(Problem::internal)?;
            if let Some(token) = self.running.lock().expect("running jobs").get(id) {
                token.cancel();
            }
            self.publish(id);
        }
        Ok(outcome)
    }

    /// The job's record once it has ended, or as it is when `wait` runs out.
    pub async fn wait_for_end(
        &self,
        id: &JobId,
        wait: Duration,
    ) -> Result<Option<JobRecord>, Problem> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut watch = self.watch(id);
        loop {
            let rec = self.store.get(id).await.map_err(Problem::internal)?;
            match &rec {
                Some(r) if !r.status.is_terminal() => {}
                _ => return Ok(rec),
            }
            if !watch.next_change(deadline).await {
                return Ok(rec);
            }
        }
    }

    /// Watches job `id`'s changes (made before its record is read, so none is missed).
    pub fn watch(&self, id: &JobId) -> JobWatch {
        self.watchers.watch(id)
    }
}

/// The function and version `rec` was submitted for, if that function still exists (not
/// deleted, nor deleted and made again under the same name).
pub async fn version_of(
    meta: &dyn wafer_core::MetaStore,
    rec: &JobRecord,
) -> Result<Option<(FunctionRecord, VersionRecord)>, wafer_core::MetaError> {
    Ok(meta
        .resolve(&rec.function, &VersionRef::Number(rec.version))
        .await?
        .filter(|(f, _)| f.tenant == rec.tenant && f.incarnation == rec.incarnation))
}

/// A job running in the server's pool: cancelled by [`Jobs::cancel`], forgotten when dropped.
pub struct Running<'a> {
    jobs: &'a Jobs,
    id: JobId,
    token: CancellationToken,
}

impl Running<'_> {
    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.jobs
            .running
            .lock()
            .expect("running jobs")
            .remove(&self.id);
    }
}
