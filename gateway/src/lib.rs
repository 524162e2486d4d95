//! The Wafer gateway: the HTTP API, the response cache and the job machinery in front of the
//! runner.
//!
//! [`Gateway::start`] opens the embedded stores in the data directory, creates the admin key
//! on first start, builds the runner and returns a router ([`router`]);
//! [`http::server::serve`] runs it with bounded connections until shutdown, draining
//! in-flight requests within a deadline.
//!
//! Layout (dependencies point up this list, never down; `scripts/module-cycles.py` checks):
//! - [`config`], [`metrics`], [`disk`]: the settings, the Prometheus registry, the data
//!   disk's reserve.
//! - [`jobs`]: the job service: submission, records, waits, cancels, lanes and estimates,
//!   runner credentials, webhooks, the runner processes alive. Domain values and
//!   [`wafer_core::Problem`]s; no HTTP types.
//! - [`admission`], [`resolve`], [`logs`], [`cache`]: invocation slots and the memory budget,
//!   cached `name@ref` resolutions, recent logs, the response cache (a tower layer).
//! - [`state`]: [`state::AppState`], everything above behind one `Arc`, built by [`startup`].
//! - [`http`]: the edge: the router and its layers, the accept loop, the one error type that
//!   becomes `problem+json`, API keys, bounded body reading.
//! - [`api`]: one module per resource; thin handlers over the services.
//! - [`execute`]: a synchronous call run in the server's pool.
//! - [`dispatch`]: where jobs run: the inline lanes in the server's pool, workers started on
//!   demand, dedicated runners on the long lane and their provisioners.
//! - [`gc`], [`startup`]: garbage collection, and the composition of it all.

pub mod admission;
pub mod api;
pub mod cache;
pub mod config;
pub mod disk;
pub mod dispatch;
pub mod execute;
pub mod gc;
pub mod http;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod resolve;
pub mod startup;
pub mod state;

pub use config::Config;
pub use http::router::router;
pub use startup::{ADMIN_KEY_FILE, Gateway, WorkerCommand, admin_key_path};
