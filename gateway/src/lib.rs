//! The Wafer gateway: the HTTP API in front of the runner.
//!
//! [`Gateway::start`] opens the embedded stores in the data directory, creates the admin key
//! on first start, builds the runner and returns a router ([`router`]);
//! [`server::serve`] runs it with bounded connections until shutdown, draining in-flight
//! requests within a deadline.

pub mod admission;
pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod dedicated;
pub mod execute;
pub mod gc;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod problem;
pub mod provision;
pub mod resolve;
pub mod router;
pub mod routing;
pub mod server;
pub mod startup;
pub mod state;
pub mod supervisor;
pub mod vm;
pub mod webhooks;
pub mod worker;

pub use config::Config;
pub use router::router;
pub use startup::{ADMIN_KEY_FILE, Gateway, WorkerCommand, admin_key_path};
