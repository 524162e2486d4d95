//! Shared state, built once at start-up from [`Config`].

use crate::config::Config;
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wafer_core::MetaStore;
use wafer_runner::Runner;

/// Everything handlers need, behind one `Arc`.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// Functions, versions, keys.
    pub meta: Arc<dyn MetaStore>,
    /// The engine.
    pub runner: Arc<Runner>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Invocation slots (global and per tenant) and the host memory budget.
    pub admission: crate::admission::Admission,
    /// Compilation slots; callers wait for one.
    pub compiles: Arc<Semaphore>,
    /// Cached `name@ref` resolutions for the invoke path.
    pub resolver: crate::resolve::Resolver,
    /// Recent invocation logs per function.
    pub logs: crate::logs::LogBook,
    /// Asynchronous jobs: their records, queue and dispatchers.
    pub jobs: crate::jobs::Jobs,
    /// Runner processes alive.
    pub fleet: crate::jobs::fleet::Fleet,
    /// The response cache; in front of invocation when `cache.enabled`, and always the
    /// source of scopes and purges (a sidecar may cache in front of a gateway that does not).
    pub cache: Arc<crate::cache::ResponseCache>,
}
