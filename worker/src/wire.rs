//! The runners' API (`/internal/v1/…`) on the wire: one type per request, which names its
//! route and the type of its answer ([`Endpoint`]). The server's handlers read these types
//! and the worker's client ([`crate::client::ServerClient::call`]) writes them, so the two
//! halves cannot drift.

use crate::order::WorkOrder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wafer_core::{Claim, Claimed, JobEnd, Lane, Route};

/// A request of the runners' API: its route (axum's pattern; `{id}` is the job's id) and
/// what the server answers.
pub trait Endpoint: Serialize + DeserializeOwned {
    /// The route, below the server's base URL.
    const ROUTE: &'static str;
    /// The answer.
    type Answer: Serialize + DeserializeOwned;
}

/// `GET`: the runner setup.
pub const SETUP_ROUTE: &str = "/internal/v1/setup";
/// `GET`: a module's compiled code for an engine (`{fingerprint}`, `{digest}`).
pub const COMPILED_ROUTE: &str = "/internal/v1/artifacts/{fingerprint}/{digest}";
/// `GET`: a module's bytes (`{digest}`).
pub const MODULE_ROUTE: &str = "/internal/v1/modules/{digest}";

/// What a runner needs to build an engine like the server's, so compiled code is shared.
#[derive(Serialize, Deserialize)]
pub struct RunnerSetup {
    /// The engine settings.
    pub engine: wafer_runner::EngineConfig,
    /// The server engine's fingerprint: a runner whose engine differs recompiles.
    pub fingerprint: String,
    /// Lease and heartbeat timings, ms.
    pub lease_ms: u64,
    /// How often a runner heartbeats a job it runs, ms.
    pub heartbeat_ms: u64,
    /// Deliveries before a job is dead-lettered.
    pub max_deliveries: u32,
    /// Time limit of one compilation, ms.
    pub compile_timeout_ms: u64,
    /// Address-space limit of the compile worker, MiB.
    pub compile_memory_mb: u64,
    /// Pre-linked modules kept hot.
    pub hot_modules: u64,
    /// The queue's key prefix when it is Redis (whose URL runners get from their
    /// environment), None for the embedded queue (reached through this API).
    pub redis_prefix: Option<String>,
    /// Each lane's per-tenant share, which claims respect.
    pub shares: wafer_core::LaneShares,
}

/// `POST`: the next job of a lane, waiting up to `wait_ms` for one.
#[derive(Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The lane to take a job from.
    pub lane: Lane,
    /// The lease, ms.
    pub lease_ms: u64,
    /// How long to wait for a job when there is none, ms (at most 30 s).
    pub wait_ms: u64,
}

/// What a claim gives: a job (or a dead one to bury) and, for a job, the claim's credential.
#[derive(Serialize, Deserialize)]
pub struct ClaimAnswer {
    /// The job claimed, if one came within the wait.
    pub claimed: Option<Claimed>,
    /// The credential of the claim.
    #[serde(default)]
    pub credential: Option<String>,
}

impl Endpoint for ClaimRequest {
    const ROUTE: &'static str = "/internal/v1/queue/claim";
    type Answer = ClaimAnswer;
}

/// `POST`: extends a claim's lease.
#[derive(Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The claim.
    pub claim: Claim,
    /// The new lease, ms.
    pub lease_ms: u64,
}

/// Whether a claim is still held: false when the job was cancelled or delivered again, so
/// the runner stops it.
#[derive(Serialize, Deserialize)]
pub struct Held {
    /// Held.
    pub held: bool,
}

impl Endpoint for HeartbeatRequest {
    const ROUTE: &'static str = "/internal/v1/queue/heartbeat";
    type Answer = Held;
}

/// `POST`: removes a delivery whose end is stored.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct AckRequest(pub Claim);

/// Whether the delivery was removed (false: it is no longer this runner's).
#[derive(Serialize, Deserialize)]
pub struct Acked {
    /// Acked.
    pub acked: bool,
}

impl Endpoint for AckRequest {
    const ROUTE: &'static str = "/internal/v1/queue/ack";
    type Answer = Acked;
}

/// `POST`: marks the job running and asks for its work order.
#[derive(Serialize, Deserialize)]
pub struct StartRequest {
    /// Which kind of runner starts it.
    pub route: Route,
    /// The delivery.
    pub attempt: u32,
    /// The claim itself, which a worker with a lane credential presents: when the queue
    /// confirms it holds the claim, the answer carries the claim's credential.
    #[serde(default)]
    pub claim: Option<Claim>,
}

/// What a start returns: the work order and the input, or nothing when the job must not run
/// (it ended or was cancelled while it waited).
#[derive(Serialize, Deserialize)]
pub struct Started {
    /// The work order.
    pub order: Option<WorkOrder>,
    /// The input, base64.
    pub input_base64: String,
    /// The credential of this delivery (heartbeat, finish, ack, the job's module).
    #[serde(default)]
    pub credential: Option<String>,
}

impl Endpoint for StartRequest {
    const ROUTE: &'static str = "/internal/v1/jobs/{id}/start";
    type Answer = Started;
}

/// `POST`: hands back how a job ended.
#[derive(Serialize, Deserialize)]
pub struct FinishRequest {
    /// How the job ended.
    pub end: JobEnd,
    /// Its output, base64.
    pub output_base64: String,
}

/// Whether the end was kept: false when the job had already ended (the first end is the only
/// result) or a later delivery of it has started.
#[derive(Serialize, Deserialize)]
pub struct Stored {
    /// Stored.
    pub stored: bool,
}

impl Endpoint for FinishRequest {
    const ROUTE: &'static str = "/internal/v1/jobs/{id}/finish";
    type Answer = Stored;
}

/// `POST`: a runner found the job dead-lettered by the queue.
#[derive(Serialize, Deserialize)]
pub struct DeadRequest {
    /// How often it was delivered.
    pub deliveries: u32,
}

/// The answer to a dead letter: it is recorded.
#[derive(Serialize, Deserialize, Default)]
pub struct Buried {}

impl Endpoint for DeadRequest {
    const ROUTE: &'static str = "/internal/v1/jobs/{id}/dead";
    type Answer = Buried;
}

/// The path of `route` for job `id`.
pub fn job_path(route: &str, id: &wafer_core::JobId) -> String {
    route.replace("{id}", id.as_str())
}
