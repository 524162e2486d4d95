//! Shared domain types and the state backends of Wafer.
//!
//! Both the runner and the gateway depend on this crate: it holds the words of the domain
//! (tenant, function, version, module digest, limits) once, and the traits behind which state
//! lives ([`ArtifactStore`], [`MetaStore`]) with their embedded backends, so that distributed
//! backends can be added beside them without touching callers.

pub mod artifacts;
pub mod meta;
pub mod names;
pub mod spec;

pub use artifacts::{ArtifactEntry, ArtifactError, ArtifactKey, ArtifactStore, FsArtifactStore};
pub use meta::{EmbeddedMetaStore, MetaError, MetaStore};
pub use names::{AliasName, Digest, FunctionName, NameError, TenantId, VersionRef};
pub use spec::{
    Abi, FunctionRecord, KeyRecord, ModuleRecord, Quotas, Scope, VersionRecord, VersionSpec,
};

/// Seconds since the Unix epoch, used for the `created` timestamps of records.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
