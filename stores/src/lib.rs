//! Wafer's state on shared services: backends of the traits in [`wafer_core`] that many
//! gateways and workers can use at once.
//!
//! The embedded backends (redb files and a directory, the single-binary default) stay in core;
//! the backends that need a client of another service live here, so that core stays small and
//! a crate that needs only the domain (the runner, the guest agent) does not build those
//! clients. Callers hold the traits' objects and never name a backend but where they are
//! chosen (`wafer_gateway::startup`, and the worker that reaches the queue itself).
//!
//! Layout:
//! - [`redis_queue`]: [`RedisJobQueue`], the job queue on Redis Streams.

pub mod redis_queue;

pub use redis_queue::RedisJobQueue;
