//! Where jobs run. The inline lanes run in the server's own pool ([`inline`]); the worker lane
//! on `wafer worker` processes started on demand ([`workers`]); the long lane on a dedicated
//! runner per job ([`long`]), made by a provisioner ([`provision`]; the `vm` one in [`vm`]). The processes alive are
//! counted in [`crate::jobs::fleet`].

pub mod inline;
pub mod long;
pub mod provision;
pub mod vm;
pub mod workers;
