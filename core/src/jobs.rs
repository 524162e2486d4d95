//! Job records: what was asked for, where it ran, how it ended and what it returned.
//!
//! The queue ([`crate::queue`]) only says which job runs next; everything a client reads about
//! a job lives here. A record moves `queued → running → succeeded | failed | dead`, or to
//! `cancelled` from either of the first two; once it has ended it never changes again, so a
//! job that ran twice (its first runner died after finishing) still shows one result: the
//! first [`JobStore::finish`] wins and later ones are refused.
//!
//! [`EmbeddedJobStore`] keeps records, inputs and outputs in a redb file of the data
//! directory, with indexes by tenant (for listing), by idempotency key and by expiry.

use crate::names::{FunctionName, TenantId};
use crate::queue::{JobId, Lane, QueuedJob};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Failures of a job store.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The backend failed.
    #[error("job store error: {0}")]
    Storage(String),
}

fn storage<E: Into<redb::Error>>(e: E) -> JobError {
    JobError::Storage(e.into().to_string())
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Running (again, after a runner died).
    Running,
    /// Ran and returned a result.
    Succeeded,
    /// Ran and failed (trap, timeout, exit code, limits); not retried.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
    /// Its runner died on every delivery; given up.
    Dead,
}

impl JobStatus {
    /// Whether the job has ended (its record no longer changes).
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Dead => "dead",
        }
    }

    /// Parses the API name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Dead,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Which kind of runner runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// The server's own runner pool.
    Inline,
    /// A `wafer worker` process pulling from the queue.
    Worker,
    /// A runner launched for this one job.
    Dedicated,
}

impl Route {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Inline => "inline",
            Route::Worker => "worker",
            Route::Dedicated => "dedicated",
        }
    }
}

/// The HTTP request a job replays to its function: for an HTTP component the whole head, for
/// a command the method and path it sees in `WAFER_METHOD` and `WAFER_PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// The path below the function, with its query.
    pub path: String,
    /// Header names and values (credentials for Wafer removed).
    pub headers: Vec<(String, String)>,
}

/// What a finished job returned (its bytes are kept apart, see [`JobStore::output`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The HTTP status of the response (200 for a command).
    pub status: u16,
    /// The response headers (for a command, its content type).
    pub headers: Vec<(String, String)>,
    /// The size of the body.
    pub bytes: u64,
}

/// Everything kept about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its owner.
    pub tenant: TenantId,
    /// The function it runs.
    pub function: FunctionName,
    /// The identity of that function when the job was submitted: a function deleted and
    /// created again under the same name is another function.
    pub incarnation: u64,
    /// The version it runs, fixed at submission.
    pub version: u32,
    /// Where it is in its life.
    pub status: JobStatus,
    /// How often a runner started it.
    pub attempts: u32,
    /// Which kind of runner runs it.
    pub route: Route,
    /// The lane it waits in.
    pub lane: Lane,
    /// Why it took that route and lane.
    pub reason: String,
    /// Unix milliseconds of submission.
    pub created_ms: u64,
    /// Unix milliseconds of the latest start.
    pub started_ms: Option<u64>,
    /// Unix milliseconds of the end.
    pub finished_ms: Option<u64>,
    /// Its wall-clock limit.
    pub timeout_ms: u64,
    /// The request replayed to the function.
    pub request: RequestHead,
    /// The size of its input.
    pub input_bytes: u64,
    /// Where to POST the outcome.
    pub webhook: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// A hash of what was submitted, to tell a replay from a different request under the
    /// same idempotency key.
    pub request_hash: String,
    /// Why it failed (a problem document), for failed, dead and cancelled jobs.
    pub error: Option<serde_json::Value>,
    /// What it returned, for succeeded jobs.
    pub result: Option<JobResult>,
    /// The tail of what it wrote to stderr.
    pub stderr: String,
    /// What its runner said of itself (see [`JobEnd::runner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<serde_json::Value>,
    /// Unix milliseconds after which the record, input and output are removed.
    pub expires_ms: Option<u64>,
    /// How the webhook delivery of its end went, when it has a webhook and has ended.
    #[serde(default)]
    pub webhook_state: Option<WebhookState>,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

impl JobRecord {
    /// What the queue needs to know of it.
    pub fn queued(&self) -> QueuedJob {
        QueuedJob {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            lane: self.lane,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEnd {
    /// Succeeded, failed or dead.
    pub status: JobStatus,
    /// The problem, unless it succeeded.
    pub error: Option<serde_json::Value>,
    /// The result, when it succeeded.
    pub result: Option<JobResult>,
    /// The tail of its stderr.
    pub stderr: String,
    /// What the runner said of itself, when it is worth keeping: a VM's kernel release, boot
    /// time and accelerator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<serde_json::Value>,
}

/// What one tenant may keep in the job store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobQuota {
    /// Jobs not ended (queued or running), at most.
    pub max_active: u64,
    /// Bytes of kept jobs' inputs and outputs, at most.
    pub max_bytes: u64,
}

impl JobQuota {
    /// No limit.
    pub const UNLIMITED: JobQuota = JobQuota {
        max_active: u64::MAX,
        max_bytes: u64::MAX,
    };
}

/// What one tenant keeps in the job store now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// Jobs not ended.
    pub active: u64,
    /// Bytes of its jobs' inputs and outputs.
    pub bytes: u64,
}

/// Which quota a submission would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// The tenant has `max_active` jobs not ended.
    Jobs,
    /// The job's input would take the tenant's stored bytes past `max_bytes`.
    Bytes,
}

/// What [`JobStore::create`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// Stored a new job.
    New(JobRecord),
    /// A job with the same idempotency key exists (the caller compares request hashes).
    Existing(JobRecord),
    /// Nothing was stored: the tenant is at a quota (its usage as it stands).
    Refused(OverQuota, JobUsage),
}

/// Which jobs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs of this function.
    pub function: Option<FunctionName>,
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
}

/// Job records, inputs and outputs.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job with its input, unless the tenant already has a job under the same
    /// idempotency key, or the job would take the tenant past `quota`.
    async fn create(
        &self,
        rec: JobRecord,
        input: Bytes,
        quota: JobQuota,
    ) -> Result<Created, JobError>;
    /// What `tenant` keeps in the store now.
    async fn usage(&self, tenant: &TenantId) -> Result<JobUsage, JobError>;
    /// A job, whoever owns it (callers check the tenant).
    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, JobError>;
    /// A job's input.
    async fn input(&self, id: &JobId) -> Result<Option<Bytes>, JobError>;
    /// A succeeded job's output.
    async fn output(&self, id: &JobId) -> Result<Option<Bytes>, JobError>;
    /// Marks a job running on `route` for delivery `attempt`; None when it has ended (for
    /// example cancelled while it waited), so it must not run.
    async fn start(
        &self,
        id: &JobId,
        route: Route,
        attempt: u32,
    ) -> Result<Option<JobRecord>, JobError>;
    /// Ends a job with its output, to be kept for `ttl`; None when it had already ended (the
    /// first end is the one visible result).
    async fn finish(
        &self,
        id: &JobId,
        end: JobEnd,
        output: Bytes,
        ttl: Duration,
    ) -> Result<Option<JobRecord>, JobError>;
    /// Cancels a job that has not ended; returns the record either way (None: no such job)
    /// and whether this call cancelled it.
    async fn cancel(
        &self,
        id: &JobId,
        ttl: Duration,
    ) -> Result<Option<(JobRecord, bool)>, JobError>;
    /// A page of a tenant's jobs, newest first, starting after `cursor`.
    async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobError>;
    /// Every job that has not ended, for making sure each is in the queue after a restart.
    async fn unfinished(&self) -> Result<Vec<QueuedJob>, JobError>;
    /// Removes a job that was never accepted (it could not be queued), with its input and
    /// idempotency key, as if it had never been submitted.
    async fn discard(&self, id: &JobId) -> Result<(), JobError>;
    /// Records how a job's webhook delivery stands (also after the job ended).
    async fn set_webhook_state(&self, id: &JobId, state: WebhookState) -> Result<(), JobError>;
    /// Ended jobs whose webhook is still to be delivered, for resuming after a restart.
    async fn pending_webhooks(&self) -> Result<Vec<JobId>, JobError>;
    /// The tenant's webhook signing secret, created when it has none or `rotate` is set; the
    /// flag says whether it is new.
    async fn webhook_secret(
        &self,
        tenant: &TenantId,
        rotate: bool,
    ) -> Result<(String, bool), JobError>;
    /// The tenant's webhook signing secret, if it has one (never creates one).
    async fn existing_webhook_secret(&self, tenant: &TenantId) -> Result<Option<String>, JobError>;
    /// Removes up to `max` jobs whose time ran out by `now_ms`, with their inputs, outputs
    /// and idempotency keys; returns how many.
    async fn purge_expired(&self, now_ms: u64, max: usize) -> Result<usize, JobError>;
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const INPUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_inputs");
const OUTPUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_outputs");
/// (tenant, newest-first order, id): a tenant's jobs in listing order.
const BY_TENANT: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("jobs_by_tenant");
/// (tenant, idempotency key) → job id.
const IDEMPOTENCY: TableDefinition<(&str, &str), &str> = TableDefinition::new("jobs_idempotency");
/// Tenant → webhook signing secret.
const SECRETS: TableDefinition<&str, &str> = TableDefinition::new("webhook_secrets");
/// (expiry in Unix ms, id): jobs in the order they are to be removed.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs_expiry");
/// Tenant → (jobs not ended, bytes of inputs and outputs), kept with every change, for quotas.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("jobs_usage");

/// Adds `active` and `bytes` (either may be negative) to `tenant`'s usage.
fn adjust_usage(
    txn: &redb::WriteTransaction,
    tenant: &str,
    active: i64,
    bytes: i64,
) -> Result<(), JobError> {
    let mut t = txn.open_table(USAGE).map_err(storage)?;
    let (a, b) = t
        .get(tenant)
        .map_err(storage)?
        .map_or((0, 0), |v| v.value());
    let add = |x: u64, d: i64| x.saturating_add_signed(d);
    t.insert(tenant, (add(a, active), add(b, bytes)))
        .map_err(storage)?;
    Ok(())
}

/// Counts every tenant's usage from the jobs themselves (a store written before usage was
/// kept).
fn rebuild_usage(txn: &redb::WriteTransaction) -> Result<(), JobError> {
    let jobs = txn.open_table(JOBS).map_err(storage)?;
    let outputs = txn.open_table(OUTPUTS).map_err(storage)?;
    let mut usage: std::collections::HashMap<String, (u64, u64)> = Default::default();
    for entry in jobs.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let rec = decode(v.value())?;
        let out = outputs
            .get(k.value())
            .map_err(storage)?
            .map_or(0, |o| o.value().len() as u64);
        let u = usage.entry(rec.tenant.as_str().to_owned()).or_default();
        u.0 += u64::from(!rec.status.is_terminal());
        u.1 += rec.input_bytes + out;
    }
    let mut t = txn.open_table(USAGE).map_err(storage)?;
    for (tenant, u) in usage {
        t.insert(tenant.as_str(), u).map_err(storage)?;
    }
    Ok(())
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(r: &JobRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("job records serialize")
}

fn decode(b: &[u8]) -> Result<JobRecord, JobError> {
    serde_json::from_slice(b).map_err(|e| JobError::Storage(format!("corrupt job record: {e}")))
}

/// Listing order: newer jobs sort first.
fn order_of(r: &JobRecord) -> u64 {
    u64::MAX - r.created_ms
}

/// The most jobs one page of a listing reads; a page that found fewer than it asked for by
/// then ends there, short, with a cursor. (Smaller in unit tests, which fill many pages.)
#[cfg(not(test))]
pub const MAX_EXAMINED_PER_PAGE: usize = 5000;
#[cfg(test)]
pub const MAX_EXAMINED_PER_PAGE: usize = 50;

fn cursor_of(r: &JobRecord) -> String {
    format!("{}.{}", order_of(r), r.id.as_str())
}

/// Whether `c` is a listing cursor as [`JobStore::list`] hands them out.
pub fn is_cursor(c: &str) -> bool {
    parse_cursor(c).is_some()
}

fn parse_cursor(c: &str) -> Option<(u64, JobId)> {
    let (order, id) = c.split_once('.')?;
    Some((order.parse().ok()?, JobId::parse(id)?))
}

/// The embedded job store: tables in a redb database of the data directory.
#[derive(Clone)]
pub struct EmbeddedJobStore {
    db: Arc<Database>,
    writer: crate::batch::BatchWriter,
}

impl EmbeddedJobStore {
    /// Opens or creates the store in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JobError> {
        let db = Database::create(path.as_ref()).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(JOBS).map_err(storage)?;
        txn.open_table(INPUTS).map_err(storage)?;
        txn.open_table(OUTPUTS).map_err(storage)?;
        txn.open_table(BY_TENANT).map_err(storage)?;
        txn.open_table(IDEMPOTENCY).map_err(storage)?;
        txn.open_table(EXPIRY).map_err(storage)?;
        txn.open_table(SECRETS).map_err(storage)?;
        let fresh = txn
            .open_table(USAGE)
            .map_err(storage)?
            .is_empty()
            .map_err(storage)?;
        if fresh {
            rebuild_usage(&txn)?;
        }
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        Ok(Self {
            writer: crate::batch::BatchWriter::new(db.clone(), "jobs"),
            db,
        })
    }

    async fn write<R, F>(&self, f: F) -> Result<R, JobError>
    where
        R: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<R, JobError> + Send + 'static,
    {
        self.writer.write(JobError::Storage, f).await
    }

    /// Applies `change` to a job that has not ended; `Ok(None)` when there is no such job,
    /// `Ok(Some((rec, false)))` when it had ended (unchanged) or `change` declined.
    async fn update<F>(&self, id: &JobId, change: F) -> Result<Option<(JobRecord, bool)>, JobError>
    where
        F: FnOnce(&mut JobRecord, &redb::WriteTransaction) -> Result<bool, JobError>
            + Send
            + 'static,
    {
        let id = id.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(JOBS).map_err(storage)?;
            let mut rec = match t.get(id.as_str()).map_err(storage)? {
                Some(v) => decode(v.value())?,
                None => return Ok(None),
            };
            if rec.status.is_terminal() || !change(&mut rec, txn)? {
                return Ok(Some((rec, false)));
            }
            t.insert(id.as_str(), encode(&rec).as_slice())
                .map_err(storage)?;
            if let Some(expires) = rec.expires_ms {
                txn.open_table(EXPIRY)
                    .map_err(storage)?
                    .insert((expires, id.as_str()), ())
                    .map_err(storage)?;
            }
            Ok(Some((rec, true)))
        })
        .await
    }

    fn read_blob(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &JobId,
    ) -> Result<Option<Bytes>, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(table).map_err(storage)?;
        Ok(t.get(id.as_str())
            .map_err(storage)?
            .map(|v| Bytes::copy_from_slice(v.value())))
    }
}

fn ends_at(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis() as u64)
}

/// What every end of a job records: when it ended, when it is removed, and a pending
/// webhook delivery when it has a webhook.
fn mark_ended(rec: &mut JobRecord, ttl: Duration) {
    rec.finished_ms = Some(now_ms());
    rec.expires_ms = Some(ends_at(ttl));
    rec.webhook_state = rec.webhook.as_ref().map(|_| WebhookState {
        status: "pending".into(),
        attempts: 0,
        last_error: None,
    });
}

#[async_trait::async_trait]
impl JobStore for EmbeddedJobStore {
    async fn create(
        &self,
        rec: JobRecord,
        input: Bytes,
        quota: JobQuota,
    ) -> Result<Created, JobError> {
        self.write(move |txn| {
            let mut jobs = txn.open_table(JOBS).map_err(storage)?;
            if let Some(key) = &rec.idempotency_key {
                let idem = txn.open_table(IDEMPOTENCY).map_err(storage)?;
                let existing = idem
                    .get((rec.tenant.as_str(), key.as_str()))
                    .map_err(storage)?
                    .map(|v| v.value().to_owned());
                if let Some(existing) = existing
                    && let Some(v) = jobs.get(existing.as_str()).map_err(storage)?
                {
                    return Ok(Created::Existing(decode(v.value())?));
                }
            }
            let (active, bytes) = txn
                .open_table(USAGE)
                .map_err(storage)?
                .get(rec.tenant.as_str())
                .map_err(storage)?
                .map_or((0, 0), |v| v.value());
            let usage = JobUsage { active, bytes };
            if active >= quota.max_active {
                return Ok(Created::Refused(OverQuota::Jobs, usage));
            }
            if bytes.saturating_add(input.len() as u64) > quota.max_bytes {
                return Ok(Created::Refused(OverQuota::Bytes, usage));
            }
            if let Some(key) = &rec.idempotency_key {
                txn.open_table(IDEMPOTENCY)
                    .map_err(storage)?
                    .insert((rec.tenant.as_str(), key.as_str()), rec.id.as_str())
                    .map_err(storage)?;
            }
            adjust_usage(txn, rec.tenant.as_str(), 1, input.len() as i64)?;
            jobs.insert(rec.id.as_str(), encode(&rec).as_slice())
                .map_err(storage)?;
            txn.open_table(INPUTS)
                .map_err(storage)?
                .insert(rec.id.as_str(), input.as_ref())
                .map_err(storage)?;
            txn.open_table(BY_TENANT)
                .map_err(storage)?
                .insert((rec.tenant.as_str(), order_of(&rec), rec.id.as_str()), ())
                .map_err(storage)?;
            Ok(Created::New(rec))
        })
        .await
    }

    async fn usage(&self, tenant: &TenantId) -> Result<JobUsage, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(USAGE).map_err(storage)?;
        let (active, bytes) = t
            .get(tenant.as_str())
            .map_err(storage)?
            .map_or((0, 0), |v| v.value());
        Ok(JobUsage { active, bytes })
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(JOBS).map_err(storage)?;
        match t.get(id.as_str()).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    async fn input(&self, id: &JobId) -> Result<Option<Bytes>, JobError> {
        self.read_blob(INPUTS, id)
    }

    async fn output(&self, id: &JobId) -> Result<Option<Bytes>, JobError> {
        self.read_blob(OUTPUTS, id)
    }

    async fn start(
        &self,
        id: &JobId,
        route: Route,
        attempt: u32,
    ) -> Result<Option<JobRecord>, JobError> {
        let changed = self
            .update(id, move |rec, _| {
                rec.status = JobStatus::Running;
                rec.route = route;
                rec.attempts = rec.attempts.max(attempt);
                rec.started_ms = Some(now_ms());
                Ok(true)
            })
            .await?;
        Ok(changed.and_then(|(rec, changed)| changed.then_some(rec)))
    }

    async fn finish(
        &self,
        id: &JobId,
        end: JobEnd,
        output: Bytes,
        ttl: Duration,
    ) -> Result<Option<JobRecord>, JobError> {
        let key = id.clone();
        let changed = self
            .update(id, move |rec, txn| {
                rec.status = end.status;
                rec.error = end.error;
                rec.result = end.result;
                rec.stderr = end.stderr;
                rec.runner = end.runner;
                mark_ended(rec, ttl);
                adjust_usage(txn, rec.tenant.as_str(), -1, output.len() as i64)?;
                if !output.is_empty() {
                    txn.open_table(OUTPUTS)
                        .map_err(storage)?
                        .insert(key.as_str(), output.as_ref())
                        .map_err(storage)?;
                }
                Ok(true)
            })
            .await?;
        Ok(changed.and_then(|(rec, changed)| changed.then_some(rec)))
    }

    async fn cancel(
        &self,
        id: &JobId,
        ttl: Duration,
    ) -> Result<Option<(JobRecord, bool)>, JobError> {
        self.update(id, move |rec, txn| {
            rec.status = JobStatus::Cancelled;
            mark_ended(rec, ttl);
            adjust_usage(txn, rec.tenant.as_str(), -1, 0)?;
            rec.error = Some(serde_json::json!({
                "type": "https://wafer.dev/problems/job-cancelled",
                "title": "Job cancelled",
                "status": 409,
                "detail": "the job was cancelled by its owner",
            }));
            Ok(true)
        })
        .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let index = txn.open_table(BY_TENANT).map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let start = cursor.and_then(parse_cursor);
        let lower = match &start {
            Some((order, id)) => (tenant.as_str(), *order, id.as_str()),
            None => (tenant.as_str(), 0, ""),
        };
        let upper = (tenant.as_str(), u64::MAX, "\u{10ffff}");
        let mut out = Vec::new();
        let mut next = None;
        let mut examined = 0;
        let mut last = None;
        for entry in index.range(lower..=upper).map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (_, order, id) = k.value();
            if start
                .as_ref()
                .is_some_and(|(_, after)| after.as_str() == id)
            {
                continue;
            }
            // A filter that few jobs match must not read the whole index for one page: past
            // the bound the page ends short, with a cursor to go on from.
            if examined == MAX_EXAMINED_PER_PAGE {
                next = last;
                break;
            }
            examined += 1;
            last = Some(format!("{order}.{id}"));
            let Some(v) = jobs.get(id).map_err(storage)? else {
                continue;
            };
            let rec = decode(v.value())?;
            let wanted = filter.function.as_ref().is_none_or(|f| *f == rec.function)
                && filter.status.is_none_or(|s| s == rec.status);
            if !wanted {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(cursor_of);
                break;
            }
            out.push(rec);
        }
        Ok(JobPage { jobs: out, next })
    }

    async fn unfinished(&self) -> Result<Vec<QueuedJob>, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(JOBS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let rec = decode(v.value())?;
            if !rec.status.is_terminal() {
                out.push(rec.queued());
            }
        }
        Ok(out)
    }

    async fn discard(&self, id: &JobId) -> Result<(), JobError> {
        let id = id.clone();
        self.write(move |txn| {
            let Some(rec) = txn
                .open_table(JOBS)
                .map_err(storage)?
                .remove(id.as_str())
                .map_err(storage)?
                .map(|v| decode(v.value()))
                .transpose()?
            else {
                return Ok(());
            };
            let active = i64::from(!rec.status.is_terminal());
            adjust_usage(txn, rec.tenant.as_str(), -active, -(rec.input_bytes as i64))?;
            txn.open_table(INPUTS)
                .map_err(storage)?
                .remove(id.as_str())
                .map_err(storage)?;
            txn.open_table(BY_TENANT)
                .map_err(storage)?
                .remove((rec.tenant.as_str(), order_of(&rec), id.as_str()))
                .map_err(storage)?;
            if let Some(key) = &rec.idempotency_key {
                txn.open_table(IDEMPOTENCY)
                    .map_err(storage)?
                    .remove((rec.tenant.as_str(), key.as_str()))
                    .map_err(storage)?;
            }
            Ok(())
        })
        .await
    }

    async fn set_webhook_state(&self, id: &JobId, state: WebhookState) -> Result<(), JobError> {
        let id = id.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(JOBS).map_err(storage)?;
            let mut rec = match t.get(id.as_str()).map_err(storage)? {
                Some(v) => decode(v.value())?,
                None => return Ok(()),
            };
            rec.webhook_state = Some(state);
            t.insert(id.as_str(), encode(&rec).as_slice())
                .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn pending_webhooks(&self) -> Result<Vec<JobId>, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(JOBS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let rec = decode(v.value())?;
            if rec
                .webhook_state
                .as_ref()
                .is_some_and(|w| w.status == "pending")
            {
                out.push(rec.id);
            }
        }
        Ok(out)
    }

    async fn webhook_secret(
        &self,
        tenant: &TenantId,
        rotate: bool,
    ) -> Result<(String, bool), JobError> {
        let tenant = tenant.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(SECRETS).map_err(storage)?;
            let existing = t
                .get(tenant.as_str())
                .map_err(storage)?
                .map(|v| v.value().to_owned());
            match existing {
                Some(secret) if !rotate => Ok((secret, false)),
                _ => {
                    let bytes: [u8; 32] = rand::random();
                    let secret = format!("whsec_{}", hex::encode(bytes));
                    t.insert(tenant.as_str(), secret.as_str())
                        .map_err(storage)?;
                    Ok((secret, true))
                }
            }
        })
        .await
    }

    async fn existing_webhook_secret(&self, tenant: &TenantId) -> Result<Option<String>, JobError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(SECRETS).map_err(storage)?;
        Ok(t.get(tenant.as_str())
            .map_err(storage)?
            .map(|v| v.value().to_owned()))
    }

    async fn purge_expired(&self, now_ms: u64, max: usize) -> Result<usize, JobError> {
        self.write(move |txn| {
            let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
            let due: Vec<(u64, String)> = expiry
                .range((0, "")..(now_ms, ""))
                .map_err(storage)?
                .take(max)
                .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            let mut jobs = txn.open_table(JOBS).map_err(storage)?;
            let mut inputs = txn.open_table(INPUTS).map_err(storage)?;
            let mut outputs = txn.open_table(OUTPUTS).map_err(storage)?;
            let mut by_tenant = txn.open_table(BY_TENANT).map_err(storage)?;
            let mut idem = txn.open_table(IDEMPOTENCY).map_err(storage)?;
            let mut removed = 0;
            for (at, id) in due {
                expiry.remove((at, id.as_str())).map_err(storage)?;
                let rec = match jobs.remove(id.as_str()).map_err(storage)? {
                    Some(v) => decode(v.value())?,
                    None => continue,
                };
                inputs.remove(id.as_str()).map_err(storage)?;
                let out = outputs
                    .remove(id.as_str())
                    .map_err(storage)?
                    .map_or(0, |o| o.value().len() as i64);
                let active = i64::from(!rec.status.is_terminal());
                adjust_usage(
                    txn,
                    rec.tenant.as_str(),
                    -active,
                    -(rec.input_bytes as i64) - out,
                )?;
                by_tenant
                    .remove((rec.tenant.as_str(), order_of(&rec), id.as_str()))
                    .map_err(storage)?;
                if let Some(key) = &rec.idempotency_key {
                    idem.remove((rec.tenant.as_str(), key.as_str()))
                        .map_err(storage)?;
                }
                removed += 1;
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str, key: Option<&str>) -> JobRecord {
        JobRecord {
            id: JobId::generate(),
            tenant: TenantId::new(tenant).unwrap(),
            function: FunctionName::new("f").unwrap(),
            incarnation: 1,
            version: 1,
            status: JobStatus::Queued,
            attempts: 0,
            route: Route::Inline,
            lane: Lane::Fast,
            reason: "test".into(),
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            timeout_ms: 1000,
            request: RequestHead {
                method: "POST".into(),
                path: "/".into(),
                headers: vec![],
            },
            input_bytes: 2,
            webhook: None,
            idempotency_key: key.map(str::to_owned),
            request_hash: "h".into(),
            error: None,
            result: None,
            stderr: String::new(),
            runner: None,
            expires_ms: None,
            webhook_state: None,
        }
    }

    fn end(status: JobStatus) -> JobEnd {
        JobEnd {
            status,
            error: None,
            result: None,
            stderr: String::new(),
            runner: None,
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_first_end_is_the_only_visible_result() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedJobStore::open(dir.path().join("j.redb")).unwrap();
        let rec = record("t", None);
        s.create(rec.clone(), Bytes::from_static(b"in"), JobQuota::UNLIMITED)
            .await
            .unwrap();
        let started = s.start(&rec.id, Route::Inline, 1).await.unwrap().unwrap();
        assert_eq!((started.status, started.attempts), (JobStatus::Running, 1));
        let done = s
            .finish(&rec.id, end(JobStatus::Succeeded), Bytes::from("one"), TTL)
            .await
            .unwrap();
        assert!(done.is_some());
        // A second run of the same job (its first runner seemed dead) ends too late.
        let late = s
            .finish(&rec.id, end(JobStatus::Failed), Bytes::from("two"), TTL)
            .await
            .unwrap();
        assert!(late.is_none());
        assert!(s.start(&rec.id, Route::Inline, 2).await.unwrap().is_none());
        assert_eq!(s.output(&rec.id).await.unwrap().unwrap(), "one");
        assert_eq!(
            s.get(&rec.id).await.unwrap().unwrap().status,
            JobStatus::Succeeded
        );
        let (after, cancelled) = s.cancel(&rec.id, TTL).await.unwrap().unwrap();
        assert!(!cancelled, "an ended job cannot be cancelled");
        assert_eq!(after.status, JobStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_tenant_s_jobs_and_bytes_are_counted_and_held_to_its_quota() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let s = EmbeddedJobStore::open(&path).unwrap();
        let quota = JobQuota {
            max_active: 2,
            max_bytes: 7,
        };
        let input = || Bytes::from_static(b"in");
        let (a, b) = (record("t", None), record("t", None));
        for r in [&a, &b] {
            let c = s.create(r.clone(), input(), quota).await.unwrap();
            assert!(matches!(c, Created::New(_)), "{c:?}");
        }
        let usage = JobUsage {
            active: 2,
            bytes: 4,
        };
        assert_eq!(s.usage(&a.tenant).await.unwrap(), usage);
        let third = record("t", None);
        let c = s.create(third.clone(), input(), quota).await.unwrap();
        assert!(
            matches!(c, Created::Refused(OverQuota::Jobs, u) if u == usage),
            "{c:?}"
        );
        assert!(s.get(&third.id).await.unwrap().is_none(), "nothing stored");
        // Another tenant has quotas of its own.
        let other = s.create(record("u", None), input(), quota).await.unwrap();
        assert!(matches!(other, Created::New(_)));
        // An end frees a place and adds its output; a cancel frees a place.
        s.finish(
            &a.id,
            end(JobStatus::Succeeded),
            Bytes::from("out"),
            Duration::ZERO,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            s.usage(&a.tenant).await.unwrap(),
            JobUsage {
                active: 1,
                bytes: 7
            }
        );
        let c = s.create(third.clone(), input(), quota).await.unwrap();
        assert!(matches!(c, Created::Refused(OverQuota::Bytes, _)), "{c:?}");
        s.cancel(&b.id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        // Usage is kept on disk, and the ended job's bytes go when it is removed.
        drop(s);
        let s = EmbeddedJobStore::open(&path).unwrap();
        assert_eq!(
            s.usage(&a.tenant).await.unwrap(),
            JobUsage {
                active: 0,
                bytes: 7
            }
        );
        assert_eq!(s.purge_expired(now_ms() + 1, 10).await.unwrap(), 1);
        assert_eq!(
            s.usage(&a.tenant).await.unwrap(),
            JobUsage {
                active: 0,
                bytes: 2
            }
        );
        let c = s.create(third, input(), quota).await.unwrap();
        assert!(matches!(c, Created::New(_)), "{c:?}");
    }

    #[tokio::test]
    async fn idempotency_keys_are_per_tenant_and_expire_with_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedJobStore::open(dir.path().join("j.redb")).unwrap();
        let first = record("a", Some("k"));
        assert!(matches!(
            s.create(first.clone(), Bytes::new(), JobQuota::UNLIMITED)
                .await
                .unwrap(),
            Created::New(_)
        ));
        match s
            .create(record("a", Some("k")), Bytes::new(), JobQuota::UNLIMITED)
            .await
            .unwrap()
        {
            Created::Existing(r) => assert_eq!(r.id, first.id),
            other => panic!("expected the existing job, got {other:?}"),
        }
        // The same key of another tenant is another job.
        assert!(matches!(
            s.create(record("b", Some("k")), Bytes::new(), JobQuota::UNLIMITED)
                .await
                .unwrap(),
            Created::New(_)
        ));
        s.finish(&first.id, end(JobStatus::Succeeded), Bytes::new(), TTL)
            .await
            .unwrap();
        assert_eq!(s.purge_expired(now_ms(), 100).await.unwrap(), 0);
        let later = now_ms() + TTL.as_millis() as u64 + 1;
        assert_eq!(s.purge_expired(later, 100).await.unwrap(), 1);
        assert!(s.get(&first.id).await.unwrap().is_none());
        assert!(s.input(&first.id).await.unwrap().is_none());
        assert!(matches!(
            s.create(record("a", Some("k")), Bytes::new(), JobQuota::UNLIMITED)
                .await
                .unwrap(),
            Created::New(_)
        ));
    }

    #[tokio::test]
    async fn listings_are_per_tenant_newest_first_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedJobStore::open(dir.path().join("j.redb")).unwrap();
        let mut ids = Vec::new();
        for i in 0..5u64 {
            let mut r = record("a", None);
            r.created_ms = 1000 + i;
            ids.push(r.id.clone());
            s.create(r, Bytes::new(), JobQuota::UNLIMITED)
                .await
                .unwrap();
        }
        s.create(record("b", None), Bytes::new(), JobQuota::UNLIMITED)
            .await
            .unwrap();
        s.cancel(&ids[1], TTL).await.unwrap();
        let tenant = TenantId::new("a").unwrap();
        let all = JobFilter::default();
        let p1 = s.list(&tenant, &all, None, 2).await.unwrap();
        let p2 = s.list(&tenant, &all, p1.next.as_deref(), 2).await.unwrap();
        let p3 = s.list(&tenant, &all, p2.next.as_deref(), 2).await.unwrap();
        let seen: Vec<_> = [p1.jobs, p2.jobs, p3.jobs.clone()]
            .concat()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, newest_first);
        assert!(p3.next.is_none());
        let cancelled = JobFilter {
            status: Some(JobStatus::Cancelled),
            ..Default::default()
        };
        let only = s.list(&tenant, &cancelled, None, 10).await.unwrap();
        assert_eq!(only.jobs.len(), 1);
        assert_eq!(only.jobs[0].id, ids[1]);
        let unfinished = s.unfinished().await.unwrap();
        assert_eq!(unfinished.len(), 5, "4 of a and 1 of b");
    }

    #[tokio::test]
    async fn a_rare_filter_reads_a_bounded_part_of_the_index_per_page() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedJobStore::open(dir.path().join("j.redb")).unwrap();
        let total = MAX_EXAMINED_PER_PAGE * 2 + 10;
        let mut rare = None;
        for i in 0..total {
            let mut r = record("a", None);
            r.created_ms = 1000 + i as u64;
            if i == 3 {
                rare = Some(r.id.clone());
            }
            s.create(r, Bytes::new(), JobQuota::UNLIMITED)
                .await
                .unwrap();
        }
        let rare = rare.unwrap();
        s.cancel(&rare, TTL).await.unwrap();
        let tenant = TenantId::new("a").unwrap();
        let cancelled = JobFilter {
            status: Some(JobStatus::Cancelled),
            ..Default::default()
        };
        // The one cancelled job is among the oldest: the first pages end short and empty,
        // each with a cursor, until it is found; nothing is skipped.
        let mut cursor = None;
        let mut pages = 0;
        let found = loop {
            let page = s
                .list(&tenant, &cancelled, cursor.as_deref(), 10)
                .await
                .unwrap();
            pages += 1;
            if let Some(j) = page.jobs.first() {
                break j.id.clone();
            }
            cursor = Some(page.next.expect("a short page has a cursor"));
        };
        assert_eq!(found, rare);
        assert_eq!(pages, 3);
    }
}
