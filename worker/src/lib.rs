//! The runner-process side of Wafer: how a job runs, wherever it runs.
//!
//! The gateway decides *where* a job runs; this crate is what runs it, in the gateway's own
//! pool, in a `wafer worker` process, in a dedicated runner or inside a microVM. It knows
//! nothing of HTTP routing or tenants (it speaks HTTP only as a client of the runners' API).
//!
//! Layout:
//! - [`call`]: the request a function runs on and the guest input made of it.
//! - [`order`]: the [`WorkOrder`] of a job, the one [`limits_of`], and [`run`] /
//!   [`execute_order`], the one way every route runs an invocation.
//! - [`end`]: how a run ends: the [`problem_of`] a failed invocation and a job's end
//!   ([`end_of`]).
//! - [`wire`]: the runners' API on the wire, one type per request with its route and answer,
//!   shared by the server's handlers and [`client`].
//! - [`client`]: the runners' side of that API, and where a runner gets deliveries.
//! - [`serve`]: the `wafer worker` loop (and a dedicated runner's one job); [`executor`]:
//!   how a started job runs, here or in a VM.
//! - [`vm`]: jobs in microVMs: the host side, the guest agent and their protocol.

pub mod call;
pub mod client;
pub mod end;
pub mod executor;
pub mod order;
pub mod serve;
pub mod vm;
pub mod wire;

pub use call::Call;
pub use end::{end_of, problem_of};
pub use order::{OutputCaps, Run, WorkOrder, execute_order, limits_of, run};
pub use serve::{WorkerOptions, serve};
