//! The Wafer gateway: the HTTP API, the response cache and the job machinery in front of the
//! runner.
//!
//! [`Gateway::start`] opens the embedded stores in the data directory, creates the admin key
//! on first start, builds the runner and returns a router ([`router`]);
//! [`http::server::serve`] runs it with bounded connections until shutdown, draining
//! in-flight requests within a deadline.
//!
//! Layout, from the bottom up: a module names only modules above it in this list
//! (`scripts/module-cycles.py` checks that no files and no rooms import each other in a
//! circle).
//! - [`metrics`], [`disk`], [`logs`]: the Prometheus registry, the data disk's reserve,
//!   recent logs per function.
//! - [`http`]: the edge below every handler: the bounded accept loop, the one error type
//!   that becomes `problem+json`, bounded body reading. No routes, no state.
//! - [`cache`]: the response cache (a tower layer, and its sidecar), with its settings.
//! - [`config`]: the server's settings.
//! - [`resolve`], [`admission`]: cached `name@ref` resolutions; invocation slots and the
//!   memory budget.
//! - [`jobs`]: the job service: submission, records, waits, cancels, lanes and estimates,
//!   runner credentials, webhooks, the runner processes alive. Domain values and
//!   [`wafer_core::Problem`]s; no HTTP types.
//! - [`state`]: [`state::AppState`], everything above behind one `Arc`, built by [`startup`].
//! - [`execute`], [`gc`]: a synchronous call run in the server's pool; garbage collection.
//! - [`api`]: one module per resource, thin handlers over the services, and API keys
//!   ([`api::auth`]); [`dispatch`]: where jobs run: the inline lanes in the server's pool,
//!   workers started on demand, dedicated runners on the long lane and their provisioners.
//! - [`router`]: every route with its layers; [`startup`]: the composition of it all.

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
pub mod router;
pub mod startup;
pub mod state;

pub use config::Config;
pub use router::router;
pub use startup::{ADMIN_KEY_FILE, Gateway, WorkerCommand, admin_key_path};
