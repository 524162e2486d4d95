//! Submitting a job: its timeout checked, its lane planned, its record stored and queued
//! before the client hears it was accepted, within the tenant's quotas and the disk's reserve.

use super::{Jobs, lanes, webhooks};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use wafer_core::{
    Created, FunctionRecord, JobId, JobQuota, JobRecord, JobStatus, JobUsage, KeyRecord, Lane,
    OverQuota, Problem, RequestHead, Route, VersionRecord,
};

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
pub fn estimate_key(function: &FunctionRecord, version: u32) -> lanes::VersionKey {
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

/// A job accepted: new, or the one an earlier submission with the same idempotency key made.
pub struct Accepted {
    /// The job.
    pub job: JobRecord,
    /// Whether it is the earlier submission's job.
    pub replayed: bool,
    /// The tenant's webhook signing secret, made by this submission (shown this once).
    pub webhook_secret: Option<String>,
}

impl Jobs {
    /// Stores and queues a job of `caller` for `function`@`version` (also for a replay of the
    /// same idempotency key). A job that would run in the server's own pool is refused now
    /// when `admission` could never fit it.
    pub async fn submit(
        &self,
        admission: &crate::admission::Admission,
        caller: &KeyRecord,
        function: &FunctionRecord,
        version: &VersionRecord,
        sub: Submission,
    ) -> Result<Accepted, Problem> {
        let jobs = self;
        let cfg = jobs.config();
        let requested = sub.timeout_ms.unwrap_or(version.spec.timeout_ms);
        if requested == 0 {
            return Err(Problem::bad_request(
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
            return Err(Problem::new(
                422,
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
        crate::disk::room(&self.data_dir, sub.input.len() as u64, cfg.min_free_disk_mb)?;
        let new_secret = match &sub.webhook {
            Some(url) => {
                webhooks::validate(url)?;
                let existing = jobs
                    .store
                    .existing_webhook_secret(&caller.tenant)
                    .await
                    .map_err(Problem::internal)?;
                match existing {
                    Some(_) => None,
                    // The tenant's first webhook makes its signing secret, shown this once: only
                    // a key that may deploy may hold it.
                    None if caller.allows(wafer_core::Scope::Deploy) => {
                        let (secret, _) = jobs
                            .store
                            .webhook_secret(&caller.tenant, false)
                            .await
                            .map_err(Problem::internal)?;
                        Some(secret)
                    }
                    None => {
                        return Err(Problem::new(
                            422,
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
        let mut planned = lanes::plan(cfg, version.spec.class, estimate, timeout_ms);
        if timeout_ms > cfg.max_timeout_ms && planned.lane != Lane::Long {
            planned = lanes::Plan {
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
            admission.check_fits(version.spec.memory_mb)?;
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
                    let mut refusal = Problem::new(503,
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
                self.metrics.job_submitted();
                Ok(Accepted {
                    job: rec,
                    replayed: false,
                    webhook_secret: new_secret,
                })
            }
            Created::Existing(existing) if existing.request_hash == hash => Ok(Accepted {
                job: existing,
                replayed: true,
                webhook_secret: None,
            }),
            Created::Existing(existing) => Err(Problem::new(422,
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
}

/// 503 for a job the store could not write (a full disk, say): its transaction did not
/// commit, so nothing of it is kept, and a retry may succeed once there is room.
fn store_unavailable(e: wafer_core::JobError) -> Problem {
    tracing::error!(error = %e, "storing a submitted job failed");
    let mut refusal = Problem::new(
        503,
        "storage-unavailable",
        "Storage unavailable",
        "the job could not be stored (the server's job store cannot write now); nothing was \
         kept: try again shortly",
    );
    refusal.retry_after = Some(5);
    refusal
}

/// 429 for a submission past one of the tenant's job quotas, saying which and where it stands.
fn over_quota(over: OverQuota, usage: JobUsage, quota: JobQuota) -> Problem {
    let mut e = match over {
        OverQuota::Jobs => Problem::new(
            429,
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
        OverQuota::Bytes => Problem::new(
            429,
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
