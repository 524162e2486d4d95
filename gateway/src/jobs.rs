//! Jobs: asynchronous invocations. A submission is stored ([`JobStore`]) and queued
//! ([`JobQueue`]) before the client gets its 202, so no accepted job is lost to a crash; a
//! dispatcher per lane claims jobs and runs them in the server's own runner pool (the
//! `inline` route), heartbeating the claim while the guest runs and acking it only after the
//! result is stored. Runners that die lose their lease and the job is delivered again; one
//! that dies on every delivery ends `dead`.
//!
//! Status changes wake the watchers of that job only ([`JobWatch`], a watch channel per job
//! that someone waits on), which long polls (`?wait=`) and the event stream hold; waits are
//! bounded per tenant and in all ([`Jobs::start_wait`]). Cancelling a running job interrupts
//! its guest.

use crate::config::JobsConfig;
use crate::execute::{self, Call};
use crate::problem::ApiError;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use wafer_core::{
    Claim, Claimed, Created, FunctionRecord, JobEnd, JobId, JobQueue, JobQuota, JobRecord,
    JobResult, JobStatus, JobStore, JobUsage, KeyRecord, Lane, OverQuota, RequestHead, Route,
    TenantId, VersionRecord, VersionRef,
};
use wafer_runner::Output;

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
    runner_keys: crate::credentials::RunnerKeys,
    metrics: Arc<crate::metrics::Metrics>,
    /// Duration estimates per function version.
    pub estimates: crate::routing::Estimates,
    webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Jobs {
    /// Jobs on `store` and `queue`; runners in other processes present `runner_token`.
    /// Ends are counted in `metrics`. Fails on webhook settings that cannot work.
    pub fn new(
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        config: JobsConfig,
        data_dir: std::path::PathBuf,
        runner_token: crate::auth::Secret,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(&config)?);
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
            runner_keys: crate::credentials::RunnerKeys::new(runner_token),
            metrics,
            estimates: Default::default(),
            webhooks,
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
            tokio::spawn(crate::webhooks::deliver(
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
            tokio::spawn(crate::webhooks::deliver(
                self.webhooks.clone(),
                self.store.clone(),
                id.clone(),
            ));
        }
        Ok(pending.len())
    }

    /// The runner key and the credentials runners in other processes get from it.
    pub fn runner_keys(&self) -> &crate::credentials::RunnerKeys {
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
    ) -> Result<Option<Claimed>, ApiError> {
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
                    .map_err(ApiError::internal)?;
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
                .map_err(ApiError::internal)?
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
    ) -> Result<Option<JobRecord>, ApiError> {
        let rec = self
            .store
            .start(id, route, attempt)
            .await
            .map_err(ApiError::internal)?;
        if rec.is_some() {
            self.publish(id);
        }
        Ok(rec)
    }

    /// Stores a job's end; false when it had already ended.
    pub async fn finish(&self, id: &JobId, end: JobEnd, output: Bytes) -> Result<bool, ApiError> {
        // An output the disk has no room for is not written (a write that fails on a full
        // disk would leave the store unusable): the job fails, saying why.
        let (end, output) = match disk_room(
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
            .map_err(ApiError::internal)?;
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
    pub async fn fail_deleted(&self, rec: &JobRecord) -> Result<(), ApiError> {
        let (end, output) = failed(
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "function-not-found",
                "Function not found",
                format!(
                    "function {:?} version {} was deleted after the job was submitted",
                    rec.function.as_str(),
                    rec.version
                ),
            ),
            String::new(),
        );
        self.finish(&rec.id, end, output).await.map(|_| ())
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

    /// Room for a submission body of at most `most` bytes (its `Content-Length` when it has
    /// one): MiB of `jobs.submit_buffer_mb`, waited for up to the body timeout, then 503.
    pub async fn submit_room(
        &self,
        headers: &HeaderMap,
        most: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(most)
            .min(most);
        // The body, and about as much again for the input taken out of it.
        let mb = (declared.saturating_mul(2) >> 20) as u32 + 1;
        let mb = mb.min(self.config.submit_buffer_mb.max(1) as u32);
        let wait = Duration::from_millis(self.config.submit_wait_ms);
        match tokio::time::timeout(wait, self.submit_room.clone().acquire_many_owned(mb)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::overloaded(format!(
                "submissions being read hold the {} MiB they may (jobs.submit_buffer_mb)",
                self.config.submit_buffer_mb
            ))),
        }
    }

    /// A wait of `tenant`'s (a long poll or an event stream), held until it is dropped; 429
    /// with Retry-After when the tenant, or the server, has as many under way as it may.
    pub fn start_wait(&self, tenant: &TenantId) -> Result<WaitSlot, ApiError> {
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
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
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
    async fn enqueue(&self, rec: &JobRecord) -> Result<(), ApiError> {
        self.queue
            .enqueue(rec.queued())
            .await
            .map_err(ApiError::internal)?;
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
    pub async fn cancel(&self, id: &JobId) -> Result<Option<(JobRecord, bool)>, ApiError> {
        let outcome = self
            .store
            .cancel(id, self.ttl())
            .await
            .map_err(ApiError::internal)?;
        if let Some((rec, true)) = &outcome {
            self.metrics.job_finished(JobStatus::Cancelled.as_str());
            self.notify_webhook(rec);
            self.queue.cancel(id).await.map_err(ApiError::internal)?;
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
    ) -> Result<Option<JobRecord>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut watch = self.watch(id);
        loop {
            let rec = self.store.get(id).await.map_err(ApiError::internal)?;
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

/// The jobs someone waits on, each with a channel that counts its changes.
#[derive(Default)]
struct Watchers(Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>);

impl Watchers {
    fn watch(&self, id: &JobId) -> JobWatch {
        let mut watchers = self.0.lock().expect("watchers");
        let rx = watchers
            .entry(id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        JobWatch {
            rx: Some(rx),
            id: id.clone(),
            watchers: self.0.clone(),
        }
    }

    fn publish(&self, id: &JobId) {
        if let Some(tx) = self.0.lock().expect("watchers").get(id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("watchers").len()
    }
}

/// A watch on one job's changes; the job's channel goes when its last watch does.
pub struct JobWatch {
    rx: Option<watch::Receiver<u64>>,
    id: JobId,
    watchers: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
}

impl JobWatch {
    /// Waits until the job may have changed (true) or `deadline` passed (false).
    pub async fn next_change(&mut self, deadline: tokio::time::Instant) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().expect("watchers");
        drop(self.rx.take());
        if watchers
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watchers.remove(&self.id);
        }
    }
}

/// Waits under way, per tenant and in all.
#[derive(Default)]
struct WaitCounts {
    per_tenant: HashMap<TenantId, usize>,
    total: usize,
}

/// A wait under way, counted against its tenant's and the server's bounds until dropped.
pub struct WaitSlot {
    waits: Arc<Mutex<WaitCounts>>,
    tenant: TenantId,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut waits = self.waits.lock().expect("waits");
        if let Some(n) = waits.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                waits.per_tenant.remove(&self.tenant);
            }
            waits.total -= 1;
        }
    }
}

/// What a client asked to run later.
pub struct Submission {
    /// The request replayed to the function.
    pub request: RequestHead,
    /// Its body.
    pub input: Bytes,
    /// Its own timeout, when given.
    pub timeout_ms: Option<u64>,
    /// Where to POST the outcome.
    pub webhook: Option<String>,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// A hash of what was submitted.
    pub request_hash: String,
}

/// The key of a version's duration estimate.
pub fn estimate_key(function: &FunctionRecord, version: u32) -> crate::routing::VersionKey {
    (function.name.to_string(), function.incarnation, version)
}

/// Hashes the parts of a submission, for idempotency checks.
pub fn hash_request(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// The request head a job keeps, without Wafer's credentials.
pub fn request_head(method: &Method, path: &str, headers: &HeaderMap) -> RequestHead {
    RequestHead {
        method: method.to_string(),
        path: path.to_owned(),
        headers: headers
            .iter()
            .filter(|(k, _)| !execute::is_credential(k))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect(),
    }
}

/// Stores and queues a job of `caller` for `function`@`version`; the answer is 202 with the
/// job and its `Location` (also for a replay of the same idempotency key).
pub async fn submit(
    state: &AppState,
    caller: &KeyRecord,
    function: &FunctionRecord,
    version: &VersionRecord,
    sub: Submission,
) -> Result<axum::response::Response, ApiError> {
    let jobs = &state.jobs;
    let cfg = jobs.config();
    let requested = sub.timeout_ms.unwrap_or(version.spec.timeout_ms);
    if requested == 0 {
        return Err(ApiError::bad_request(
            "invalid-timeout",
            "timeout_ms must be at least 1",
        ));
    }
    let most = if version.spec.class == Some(wafer_core::JobClass::Short) {
        cfg.max_timeout_ms
    } else {
        cfg.long.max_timeout_ms.max(cfg.max_timeout_ms)
    };
    if requested > most {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "timeout-too-large",
            "Timeout too large",
            format!(
                "timeout_ms {requested} is above the most a job of this function may run, \
                 {most} ms (jobs.max_timeout_ms, or jobs.long.max_timeout_ms on the long lane)"
            ),
        )
        .with("limit", most));
    }
    let timeout_ms = requested;
    disk_room(
        &state.config.data_dir,
        sub.input.len() as u64,
        cfg.min_free_disk_mb,
    )?;
    let new_secret = match &sub.webhook {
        Some(url) => {
            crate::webhooks::validate(url)?;
            let existing = jobs
                .store
                .existing_webhook_secret(&caller.tenant)
                .await
                .map_err(ApiError::internal)?;
            match existing {
                Some(_) => None,
                // The tenant's first webhook makes its signing secret, shown this once: only
                // a key that may deploy may hold it.
                None if caller.allows(wafer_core::Scope::Deploy) => {
                    let (secret, _) = jobs
                        .store
                        .webhook_secret(&caller.tenant, false)
                        .await
                        .map_err(ApiError::internal)?;
                    Some(secret)
                }
                None => {
                    return Err(ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "webhook-secret-missing",
                        "No webhook signing secret",
                        "this tenant has no webhook signing secret yet, and this key may not \
                         create one: create it with POST /v1/webhooks/secret and a key with the \
                         deploy scope",
                    ));
                }
            }
        }
        None => None,
    };
    let estimate = jobs.estimates.p95(&estimate_key(function, version.version));
    let mut planned = crate::routing::plan(cfg, version.spec.class, estimate, timeout_ms);
    if timeout_ms > cfg.max_timeout_ms && planned.lane != Lane::Long {
        planned = crate::routing::Plan {
            lane: Lane::Long,
            reason: format!(
                "its timeout of {timeout_ms} ms is above what workers run ({} ms)",
                cfg.max_timeout_ms
            ),
        };
    }
    let (lane, reason) = (planned.lane, planned.reason);
    // What the server's own pool could never admit is refused now, not left waiting.
    if jobs.route_of(lane) == Route::Inline {
        state.admission.check_fits(version.spec.memory_mb)?;
    }
    let rec = JobRecord {
        id: JobId::generate(),
        tenant: caller.tenant.clone(),
        function: function.name.clone(),
        incarnation: function.incarnation,
        version: version.version,
        status: JobStatus::Queued,
        attempts: 0,
        route: jobs.route_of(lane),
        lane,
        reason: match jobs.route_of(lane) {
            Route::Inline => format!("{reason}; runs in the server's pool"),
            Route::Worker => format!("{reason}; runs on a worker"),
            Route::Dedicated => format!("{reason}; runs on a dedicated runner"),
        },
        created_ms: wafer_core::jobs::now_ms(),
        started_ms: None,
        finished_ms: None,
        timeout_ms,
        request: sub.request,
        input_bytes: sub.input.len() as u64,
        webhook: sub.webhook,
        idempotency_key: sub.idempotency_key,
        request_hash: sub.request_hash,
        error: None,
        result: None,
        stderr: String::new(),
        runner: None,
        expires_ms: None,
        webhook_state: None,
    };
    let hash = rec.request_hash.clone();
    let quota = JobQuota {
        max_active: jobs.config.max_jobs_per_tenant,
        max_bytes: jobs
            .config
            .max_job_storage_mb_per_tenant
            .saturating_mul(1 << 20),
    };
    match jobs
        .store
        .create(rec, sub.input, quota)
        .await
        .map_err(store_unavailable)?
    {
        Created::Refused(over, usage) => Err(over_quota(over, usage, quota)),
        Created::New(rec) => {
            if let Err(e) = jobs.enqueue(&rec).await {
                // Not queued, so not accepted: end the record rather than leave it waiting.
                tracing::warn!(job = rec.id.as_str(), error = %e.detail, "queueing a job failed");
                let mut refusal = ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "queue-unavailable",
                    "Queue unavailable",
                    "the job queue cannot take jobs right now; try again shortly",
                );
                refusal.retry_after = Some(1);
                // A retry with the same idempotency key makes a new job.
                if let Err(e) = jobs.store.discard(&rec.id).await {
                    tracing::warn!(job = rec.id.as_str(), error = %e, "discarding a job failed");
                }
                return Err(refusal);
            }
            state.metrics.job_submitted();
            let mut resp = accepted(&rec, false);
            if let Some(secret) = new_secret {
                // The tenant's first webhook: its signing secret is shown this once.
                let mut body = view(&rec);
                body["webhook_secret"] = Value::String(secret);
                *resp.body_mut() = axum::body::Body::from(body.to_string());
            }
            Ok(resp)
        }
        Created::Existing(existing) if existing.request_hash == hash => {
            Ok(accepted(&existing, true))
        }
        Created::Existing(existing) => Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            format!(
                "the Idempotency-Key was used for job {} with a different request; use a new key",
                existing.id.as_str()
            ),
        )
        .with("job", existing.id.as_str())),
    }
}

/// 503 `storage-full` when storing `bytes` would leave the data directory's disk with less
/// than `min_free_mb` free: the store is never written to a full disk (where a failed write
/// would leave it unusable until the server restarts).
pub(crate) fn disk_room(
    dir: &std::path::Path,
    bytes: u64,
    min_free_mb: u64,
) -> Result<(), ApiError> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    let reserve = min_free_mb.saturating_mul(1 << 20);
    if free >= bytes.saturating_add(reserve) {
        return Ok(());
    }
    let mut refusal = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "storage-full",
        "Storage full",
        format!(
            "the server's disk is nearly full ({} MiB free, {min_free_mb} MiB kept free: \
             jobs.min_free_disk_mb); nothing was stored: try again later",
            free >> 20
        ),
    );
    refusal.retry_after = Some(30);
    Err(refusal)
}

/// Bytes free to unprivileged writers on the file system of `dir`; None when unknown.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs(3) with a NUL-terminated path and a buffer of the right type; the
    // struct is read only when the call succeeded.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// 503 for a job the store could not write (a full disk, say): its transaction did not
/// commit, so nothing of it is kept, and a retry may succeed once there is room.
fn store_unavailable(e: wafer_core::JobError) -> ApiError {
    tracing::error!(error = %e, "storing a submitted job failed");
    let mut refusal = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "Storage unavailable",
        "the job could not be stored (the server's job store cannot write now); nothing was \
         kept: try again shortly",
    );
    refusal.retry_after = Some(5);
    refusal
}

/// 429 for a submission past one of the tenant's job quotas, saying which and where it stands.
fn over_quota(over: OverQuota, usage: JobUsage, quota: JobQuota) -> ApiError {
    let mut e = match over {
        OverQuota::Jobs => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too-many-jobs",
            "Too many jobs",
            format!(
                "this tenant has {} jobs queued or running, its most \
                 (jobs.max_jobs_per_tenant); submit again when some have ended",
                usage.active
            ),
        )
        .with("limit", quota.max_active)
        .with("jobs", usage.active),
        OverQuota::Bytes => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "job-storage-full",
            "Job storage full",
            format!(
                "this tenant's kept jobs hold {} bytes of inputs and results, and this input \
                 would pass its {} (jobs.max_job_storage_mb_per_tenant); ended jobs are removed \
                 when their time runs out",
                usage.bytes, quota.max_bytes
            ),
        )
        .with("limit_bytes", quota.max_bytes)
        .with("stored_bytes", usage.bytes),
    };
    e.retry_after = Some(5);
    e
}

/// 202 with the job and where to find it.
fn accepted(rec: &JobRecord, replayed: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let location = format!("/v1/jobs/{}", rec.id.as_str());
    let mut resp = (axum::http::StatusCode::ACCEPTED, axum::Json(view(rec))).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if replayed {
        h.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// The API's view of a job.
pub fn view(r: &JobRecord) -> Value {
    let since = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let content_type = r.result.as_ref().and_then(|res| {
        res.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
    });
    json!({
        "id": r.id.as_str(),
        "function": r.function.as_str(),
        "version": r.version,
        "status": r.status.as_str(),
        "attempts": r.attempts,
        "route": r.route.as_str(),
        "lane": r.lane,
        "route_reason": r.reason,
        "timeout_ms": r.timeout_ms,
        "input_bytes": r.input_bytes,
        "timings": {
            "queued_at_ms": r.created_ms,
            "started_at_ms": r.started_ms,
            "finished_at_ms": r.finished_ms,
            "wait_ms": since(Some(r.created_ms), r.started_ms),
            "run_ms": since(r.started_ms, r.finished_ms),
        },
        "result": r.result.as_ref().map(|res| json!({
            "status": res.status,
            "content_type": content_type,
            "bytes": res.bytes,
            "url": format!("/v1/jobs/{}/result", r.id.as_str()),
        })),
        "error": r.error,
        "runner": r.runner,
        "expires_at_ms": r.expires_ms,
        "webhook": r.webhook_state.as_ref().map(crate::webhooks::view),
    })
}

/// Starts the dispatchers of the inline lanes and the sweeper of expired jobs.
pub fn start(state: &Arc<AppState>) {
    let per_lane = state.jobs.config.inline_per_lane(state.config.max_inflight);
    for lane in state.jobs.inline_lanes() {
        let permits = Arc::new(Semaphore::new(per_lane));
        tokio::spawn(dispatch(state.clone(), lane, permits));
    }
    tokio::spawn(sweep(state.clone()));
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
                bury(&state, &job.id, deliveries).await;
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

/// Marks a job dead: every delivery ended with its runner gone.
pub async fn bury(state: &AppState, id: &JobId, deliveries: u32) {
    let detail = format!(
        "the job's runner stopped without a result on each of {deliveries} deliveries \
         (jobs.max_deliveries); the job is not retried"
    );
    tracing::warn!(job = id.as_str(), deliveries, "job dead-lettered");
    let end = JobEnd {
        status: JobStatus::Dead,
        error: Some(
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "job-dead",
                "Job dead",
                detail,
            )
            .with("deliveries", deliveries)
            .body(None),
        ),
        result: None,
        stderr: String::new(),
        runner: None,
    };
    if let Err(e) = state.jobs.finish(id, end, Bytes::new()).await {
        tracing::warn!(error = %e.detail, "recording a dead job failed");
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
    let token = CancellationToken::new();
    jobs.running
        .lock()
        .expect("running jobs")
        .insert(id.clone(), token.clone());
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
        () = token.cancelled() => None,
        () = heartbeat => None,
    };
    jobs.running.lock().expect("running jobs").remove(&id);
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

fn failed(e: ApiError, stderr: String) -> (JobEnd, Bytes) {
    (
        JobEnd {
            status: JobStatus::Failed,
            error: Some(e.body(None)),
            result: None,
            stderr,
            runner: None,
        },
        Bytes::new(),
    )
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

/// The function and version `rec` was submitted for, if that function still exists (not
/// deleted, nor deleted and made again under the same name).
pub(crate) async fn version_of(
    meta: &dyn wafer_core::MetaStore,
    rec: &JobRecord,
) -> Result<Option<(FunctionRecord, VersionRecord)>, wafer_core::MetaError> {
    Ok(meta
        .resolve(&rec.function, &VersionRef::Number(rec.version))
        .await?
        .filter(|(f, _)| f.tenant == rec.tenant && f.incarnation == rec.incarnation))
}

/// Takes a place in the server's memory budget for the job of `claim`, without waiting.
async fn admit(state: &AppState, claim: &Claim) -> Admit {
    let rec = match state.jobs.store.get(&claim.job.id).await {
        Ok(Some(rec)) => rec,
        _ => return Admit::Now(None),
    };
    let Ok(Some((function, version))) = version_of(state.meta.as_ref(), &rec).await else {
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
        Err(e) => return failed(ApiError::internal(e), String::new()),
    };
    let call = Call::replay(&rec.request, input);
    let span = tracing::info_span!(
        "job",
        tenant = %function.tenant,
        function = %function.name,
        version = version.version,
        job = rec.id.as_str(),
    );
    let started = Instant::now();
    let limits = execute::limits_of(state, version, Some(Duration::from_millis(rec.timeout_ms)));
    let result = execute::run(state, function, version, call, limits, &span).await;
    let seconds = started.elapsed().as_secs_f64();
    let cold = matches!(&result, Ok((_, true)));
    let fuel = result.as_ref().map_or(0, |(o, _)| o.fuel);
    let (end, output) = end_of(result.map(|(o, _)| o));
    let slug = end
        .error
        .as_ref()
        .and_then(|e| e["type"].as_str())
        .and_then(|t| t.strip_prefix(crate::problem::TYPE_BASE))
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
    let resolved = match version_of(state.meta.as_ref(), rec).await {
        Ok(r) => r,
        Err(e) => return failed(e.into(), String::new()),
    };
    let Some((_, version)) = resolved else {
        return failed(
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "function-not-found",
                "Function not found",
                format!(
                    "function {:?} version {} was deleted after the job was submitted",
                    rec.function.as_str(),
                    rec.version
                ),
            ),
            String::new(),
        );
    };
    // One that can never be admitted (its version needs more than a tenant's share) fails.
    if let Err(e) = state.admission.check_fits(version.spec.memory_mb) {
        return failed(e, String::new());
    }
    failed(
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "the job could not be given a place in the server's memory budget",
        ),
        String::new(),
    )
}

/// The most bytes a runner's message with a job's end may take: a whole output of up to
/// `output_bytes` (base64), a whole log of up to `log_bytes` (JSON-escaped, at worst six bytes
/// a byte), and 64 KiB for the rest. The runners' API and the VM's channel both read it.
pub fn end_message_bytes(output_bytes: usize, log_bytes: usize) -> usize {
    output_bytes.div_ceil(3) * 4 + log_bytes * 6 + (64 << 10)
}

/// A job's end and output from what its invocation returned: the response (status, headers,
/// body) or, for a command, stdout with its content type; a problem when it failed.
pub fn end_of(result: Result<wafer_runner::Outcome, wafer_runner::InvokeError>) -> (JobEnd, Bytes) {
    match result {
        Ok(outcome) => {
            let log = String::from_utf8_lossy(&outcome.log).into_owned();
            let (result, body) = match outcome.output {
                Output::Http(r) => {
                    let (parts, body) = r.into_parts();
                    let headers = parts
                        .headers
                        .iter()
                        .filter(|(k, _)| {
                            *k != header::CONTENT_LENGTH && *k != header::TRANSFER_ENCODING
                        })
                        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                        .collect();
                    (
                        JobResult {
                            status: parts.status.as_u16(),
                            headers,
                            bytes: body.len() as u64,
                        },
                        body,
                    )
                }
                Output::Stdout(bytes) => (
                    JobResult {
                        status: 200,
                        headers: vec![(
                            "content-type".into(),
                            execute::content_type_of(&bytes).into(),
                        )],
                        bytes: bytes.len() as u64,
                    },
                    bytes,
                ),
            };
            (
                JobEnd {
                    status: JobStatus::Succeeded,
                    error: None,
                    result: Some(result),
                    stderr: log,
                    runner: None,
                },
                body,
            )
        }
        Err(e) => {
            let stderr = e.stderr().to_owned();
            failed(e.into(), stderr)
        }
    }
}

/// Removes ended jobs whose time ran out, every `sweep_interval_ms`.
async fn sweep(state: Arc<AppState>) {
    let every = Duration::from_millis(state.jobs.config.sweep_interval_ms.max(10));
    loop {
        tokio::time::sleep(every).await;
        loop {
            match state
                .jobs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_watchers_of_its_job_only() {
        let w = Watchers::default();
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut on_a = w.watch(&a);
        let mut on_a_too = w.watch(&a);
        let mut on_b = w.watch(&b);
        w.publish(&a);
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(on_a.next_change(soon).await);
        assert!(on_a_too.next_change(soon).await);
        assert!(!on_b.next_change(soon).await, "b did not change");
        // A change before the wait is not missed; the channel goes with its last watch.
        w.publish(&b);
        assert!(on_b.next_change(soon).await);
        assert_eq!(w.len(), 2);
        drop((on_a, on_a_too));
        assert_eq!(w.len(), 1);
        drop(on_b);
        assert_eq!(w.len(), 0);
        w.publish(&a);
    }
}
