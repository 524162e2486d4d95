//! Shared domain types and the state traits of Wafer, with their embedded backends.
//!
//! Every other crate depends on this one: it holds the words of the domain (tenant, function,
//! version, module digest, job) once, and the traits behind which state lives with the
//! backends of the single-binary default (a directory and redb files), so that the backends
//! on shared services (`wafer-stores`) are added beside them without touching callers.
//!
//! Layout:
//! - [`names`]: validated names and references (tenant, function, alias, digest, `name@ref`).
//! - [`records`]: what the stores keep: functions, versions and their specs, keys, modules,
//!   quotas.
//! - [`artifacts`]: [`ArtifactStore`], modules and compiled code by digest
//!   ([`FsArtifactStore`]).
//! - [`meta`]: [`MetaStore`], functions, versions, aliases, keys and quotas
//!   ([`EmbeddedMetaStore`]).
//! - [`jobs`]: [`JobStore`], job records, inputs, outputs and ends ([`EmbeddedJobStore`]).
//! - [`queue`]: [`JobQueue`], lanes, claims, leases and fair shares ([`EmbeddedJobQueue`]);
//!   `batch` groups the embedded job store's and queue's writes into shared commits.
//! - [`problem`]: the problem document (RFC 9457) that jobs, workers and the HTTP edge carry;
//!   [`secret`]: a value that never prints.

pub mod artifacts;
mod batch;
pub mod jobs;
pub mod meta;
pub mod names;
pub mod problem;
pub mod queue;
pub mod records;
pub mod secret;

pub use artifacts::{ArtifactEntry, ArtifactError, ArtifactKey, ArtifactStore, FsArtifactStore};
pub use jobs::{
    Created, EmbeddedJobStore, JobEnd, JobError, JobFilter, JobPage, JobQuota, JobRecord,
    JobResult, JobStatus, JobStore, JobUsage, OverQuota, RequestHead, Route, WebhookState,
};
pub use meta::{EmbeddedMetaStore, MetaError, MetaStore};
pub use names::{AliasName, Digest, FunctionName, NameError, TenantId, VersionRef};
pub use problem::Problem;
pub use queue::{
    Claim, Claimed, EmbeddedJobQueue, JobId, JobQueue, Lane, LaneShares, QueueError, QueuedJob,
};
pub use records::{
    Abi, CacheSpec, FunctionRecord, JobClass, KeyRecord, ModuleRecord, Quotas, Scope,
    VersionRecord, VersionSpec,
};
pub use secret::Secret;

/// Seconds since the Unix epoch, used for the `created` timestamps of records.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Crash-consistency tests name a point in the upload and deploy paths with the environment
/// variable `WAFER_CRASH_AT`; the process aborts there, as a `kill -9` at that moment would
/// end it. Unset (always, outside those tests) it costs one read of a cached value.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("WAFER_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
}

/// Runs a redb write transaction off the async runtime (its commit fsyncs); every failure,
/// of redb or of the blocking task, becomes `fail(message)`. The write path of the embedded
/// metadata store (the job store and queue commit in batches: see `batch`).
pub(crate) async fn redb_write<R, E, F>(
    db: &std::sync::Arc<redb::Database>,
    fail: fn(String) -> E,
    f: F,
) -> Result<R, E>
where
    R: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&redb::WriteTransaction) -> Result<R, E> + Send + 'static,
{
    let db = db.clone();
    let redb_fail = move |e: redb::Error| fail(e.to_string());
    tokio::task::spawn_blocking(move || {
        let txn = db.begin_write().map_err(|e| redb_fail(e.into()))?;
        let r = f(&txn)?;
        txn.commit().map_err(|e| redb_fail(e.into()))?;
        Ok(r)
    })
    .await
    .map_err(|e| fail(e.to_string()))?
}
