//! Where jobs run. The inline lanes run in the server's own pool ([`inline`]); the worker lane
//! on `wafer worker` processes started on demand ([`workers`]); the long lane on a dedicated
//! runner per job ([`long`]), made by a provisioner ([`provision`]; the `vm` one in [`vm`]). [`fleet`] counts the processes alive.

pub mod fleet;
pub mod inline;
pub mod long;
pub mod provision;
pub mod vm;
pub mod workers;
