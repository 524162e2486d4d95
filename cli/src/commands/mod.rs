//! One module per CLI command, each a thin shell over the HTTP API or the library.

pub mod cache;
pub mod deploy;
pub mod invoke;
pub mod jobs;
pub mod manage;
pub mod serve;
pub mod worker;
