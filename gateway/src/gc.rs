//! Garbage collection of what no version uses: a tenant's module records that none of its
//! versions run, then module bytes no record holds and compiled code no record or no current
//! engine needs. Everything younger than the grace period is kept, so an upload between its
//! module and its first version, or a write in progress, is never collected.

use crate::state::AppState;
use serde::Serialize;
use std::collections::BTreeSet;
use wafer_core::{ArtifactKey, Digest, MetaError};

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct GcReport {
    /// Module records of tenants that no version of theirs runs.
    pub module_records: usize,
    /// Stored modules no record holds.
    pub modules: usize,
    /// Compiled code of such modules, or of another engine.
    pub compiled: usize,
}

/// Errors of a collection.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The artifact store failed.
    #[error(transparent)]
    Artifacts(#[from] wafer_core::ArtifactError),
}

/// Collects everything unused and older than `grace_s` seconds.
pub async fn collect(state: &AppState, grace_s: u64) -> Result<GcReport, GcError> {
    let cutoff = wafer_core::now_unix().saturating_sub(grace_s);
    let mut report = GcReport::default();
    let uses: BTreeSet<_> = state.meta.module_uses().await?.into_iter().collect();
    let mut kept: BTreeSet<Digest> = BTreeSet::new();
    for (tenant, rec) in state.meta.module_records().await? {
        if uses.contains(&(tenant.clone(), rec.digest.clone())) || rec.created > cutoff {
            kept.insert(rec.digest);
        } else {
            state.meta.delete_module(&tenant, &rec.digest).await?;
            report.module_records += 1;
        }
    }
    // A version created meanwhile keeps its module.
    kept.extend(state.meta.module_uses().await?.into_iter().map(|(_, d)| d));
    let fingerprint = state.runner.fingerprint();
    let artifacts = state.runner.artifacts();
    for entry in artifacts.list().await? {
        let (digest, is_module, stale_engine) = match &entry.key {
            ArtifactKey::Module(d) => (d, true, false),
            ArtifactKey::Compiled {
                fingerprint: fp,
                digest,
            } => (digest, false, fp != fingerprint),
        };
        let unused = !kept.contains(digest) && entry.modified <= cutoff;
        if !(unused || stale_engine) {
            continue;
        }
        artifacts.delete(&entry.key).await?;
        if is_module {
            report.modules += 1;
        } else {
            report.compiled += 1;
            if !stale_engine {
                state.runner.forget(digest);
            }
        }
    }
    if report.module_records + report.modules + report.compiled > 0 {
        tracing::info!(
            module_records = report.module_records,
            modules = report.modules,
            compiled = report.compiled,
            "collected unused modules"
        );
    }
    Ok(report)
}

/// Collects every `interval_s` seconds for as long as the process runs.
pub async fn run_periodically(state: std::sync::Arc<AppState>) {
    let interval = state.config.gc_interval_s;
    if interval == 0 {
        return;
    }
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = collect(&state, state.config.gc_grace_s).await {
            tracing::warn!(error = %e, "garbage collection failed");
        }
    }
}
