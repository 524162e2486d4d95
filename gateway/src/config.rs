//! Gateway configuration: one struct with defaults that make `wafer serve` work with no flags.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use wafer_runner::EngineConfig;

/// Everything `wafer serve` needs; loaded from an optional TOML file, then `WAFER_*`
/// environment variables and flags (layered by the CLI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// A listener of its own for the runners' internal API (`/internal/v1/…`), which the main
    /// listener then does not serve: put it on an address only runners reach. None: the main
    /// listener serves it.
    pub internal_listen: Option<SocketAddr>,
    /// Data directory: metadata database, artifacts, admin key.
    pub data_dir: PathBuf,
    /// Largest module upload, in bytes.
    pub max_module_bytes: u64,
    /// Largest invocation request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest JSON body of an API call, in bytes.
    pub max_json_bytes: usize,
    /// Time a client has to send a request body, in ms (408 beyond).
    pub body_timeout_ms: u64,
    /// Time a client has to send a request head, in ms, counted from when the connection
    /// waits for one; it also closes idle keep-alive connections.
    pub header_read_timeout_ms: u64,
    /// Client connections open at once; more are closed as soon as they are accepted.
    /// Kept below the process's open-file limit (raised to its hard limit at start).
    pub max_connections: usize,
    /// Time in-flight requests get to finish after SIGTERM, in ms; then the server exits.
    pub shutdown_grace_ms: u64,
    /// Invocations running at once before new ones get 503.
    pub max_inflight: usize,
    /// Invocations of one tenant's functions running at once; more get 503, so one tenant
    /// cannot take every slot from the others.
    pub max_inflight_per_tenant: usize,
    /// Guest memory that invocations in flight may hold together, in MiB; each reserves its
    /// version's `memory_mb` and more get 503. 0 means half of the machine's memory.
    pub memory_budget_mb: u64,
    /// Compilations running at once; more wait.
    pub max_compiles: usize,
    /// Time an upload waits for a compile slot, in ms (503 beyond).
    pub compile_wait_ms: u64,
    /// Time limit of one compilation, in ms.
    pub compile_timeout_ms: u64,
    /// Address-space limit of the compile worker, in MiB.
    pub compile_memory_mb: u64,
    /// How often unused modules and compiled code are collected, in seconds (0: never).
    pub gc_interval_s: u64,
    /// Age a module must reach, unused by any version, before it is collected, in seconds.
    pub gc_grace_s: u64,
    /// What one tenant may hold.
    pub quotas: wafer_core::Quotas,
    /// Function defaults and ceilings.
    pub functions: FunctionDefaults,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Pre-linked modules kept hot.
    pub hot_modules: u64,
    /// Asynchronous jobs.
    pub jobs: JobsConfig,
    /// Where the job queue lives.
    pub queue: QueueConfig,
    /// The response cache.
    pub cache: crate::cache::CacheConfig,
}

/// The job queue's backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `embedded` (a file in the data directory) or `redis` (Redis Streams).
    pub backend: QueueBackend,
    /// The Redis URL (`redis://[:password@]host:port[/db]`); it may hold a password, so it
    /// reaches runner processes through their environment and is never logged.
    pub url: String,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub prefix: String,
}

/// Queue backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// The embedded queue (default).
    Embedded,
    /// Redis Streams with consumer groups.
    Redis,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Embedded,
            url: "redis://127.0.0.1:6379".into(),
            prefix: "wafer".into(),
        }
    }
}

/// Settings of asynchronous jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How long an ended job (record, input, output) is kept, in seconds.
    pub ttl_s: u64,
    /// How long a runner holds a job without a heartbeat before it is delivered again, ms.
    pub lease_ms: u64,
    /// Deliveries of a job whose runner dies before it is given up as `dead`.
    pub max_deliveries: u32,
    /// Jobs the server runs at once in each of its lanes (0: half of `max_inflight`).
    pub inline_concurrency: usize,
    /// The share of a lane's slots one tenant's jobs may hold at once, percent (at least one
    /// slot): the rest stays for other tenants, whose jobs start while one floods the lane.
    /// The long lane's share is `long.max_per_tenant`.
    pub tenant_share_percent: u32,
    /// Jobs of one tenant that have not ended (queued or running), at most; a submit beyond
    /// is refused (429 too-many-jobs).
    pub max_jobs_per_tenant: u64,
    /// MiB one tenant's kept jobs may store (inputs and results); a submit beyond is refused
    /// (429 job-storage-full) until jobs are deleted or expire.
    pub max_job_storage_mb_per_tenant: u64,
    /// A submission is refused (503 storage-full) when storing it would leave less than this
    /// free on the data directory's disk, MiB.
    pub min_free_disk_mb: u64,
    /// Jobs whose estimate (p95 of recent runs; before any run, their timeout) is at most
    /// this go to the fast lane, ms.
    pub fast_lane_ms: u64,
    /// The longest timeout of a job on the fast and default lanes, ms; a longer one sends the
    /// job to the long lane (up to `long.max_timeout_ms`), unless its class is `short`.
    pub max_timeout_ms: u64,
    /// The longest `?wait=` a client may ask for, seconds (longer waits are cut to it).
    pub max_wait_s: u64,
    /// Waits under way at once (`?wait=` long polls and event streams), server-wide.
    pub max_waits: usize,
    /// Waits under way at once for one tenant.
    pub max_waits_per_tenant: usize,
    /// MiB that job submissions being read and stored may take together (each counts twice
    /// its body: the body and the input taken out of it); more wait for room.
    pub submit_buffer_mb: u64,
    /// How long a submission waits for that room before it is refused (503), ms.
    pub submit_wait_ms: u64,
    /// How often ended jobs past their time are removed, ms.
    pub sweep_interval_ms: u64,
    /// Worker processes (`wafer worker`) the server starts for the default lane when jobs
    /// wait, at most; 0 runs that lane in the server's own pool.
    pub workers: usize,
    /// Jobs one worker runs at once.
    pub worker_concurrency: usize,
    /// A worker with nothing to do for this long exits, ms (scale to zero).
    pub worker_idle_ms: u64,
    /// Attempts to deliver a webhook before it is recorded as failed.
    pub webhook_attempts: u32,
    /// The delay before the first retry of a webhook, ms; it doubles with each failure.
    pub webhook_backoff_ms: u64,
    /// Time one webhook attempt may take, ms.
    pub webhook_timeout_ms: u64,
    /// Whether webhooks may target loopback, private and link-local addresses.
    pub webhook_allow_private: bool,
    /// Webhook attempts in flight at once, server-wide; more wait their turn.
    pub webhook_max_in_flight: usize,
    /// A proxy for webhook deliveries (`http://host:port`); empty: none. The environment's
    /// proxy variables are never used.
    pub webhook_proxy: String,
    /// Jobs whose estimate (or, before any run, timeout) is above this go to the long lane,
    /// ms.
    pub long_lane_ms: u64,
    /// A synchronous call of a version whose estimate is above this is answered 202 with a
    /// job instead of holding the connection (unless `Prefer: wait`), ms.
    pub inline_budget_ms: u64,
    /// The long lane: dedicated runners.
    pub long: LongLaneConfig,
}

/// The long lane: one dedicated runner per job, launched by a provisioner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LongLaneConfig {
    /// Dedicated runners alive at once, at most.
    pub max_runners: usize,
    /// Dedicated runners of one tenant at once, at most.
    pub max_per_tenant: usize,
    /// The longest timeout a long job may ask for, ms.
    pub max_timeout_ms: u64,
    /// Fuel of a long job (when its version's is lower).
    pub fuel: u64,
    /// Memory of a long job, MiB, when its version's is lower (0: the version's); at most
    /// the engine's `max_memory_mb`.
    pub memory_mb: u64,
    /// Time a launched runner has to start its job before the job fails, ms.
    pub start_timeout_ms: u64,
    /// `local` (a child process per job), `vm` (a child process per job that runs the job
    /// in a microVM of its own), `command` or `kubernetes`.
    pub provisioner: ProvisionerKind,
    /// Settings of the `vm` provisioner.
    pub vm: wafer_worker::vm::VmOptions,
    /// Settings of the `command` provisioner.
    pub command: CommandProvisionerConfig,
    /// Settings of the `kubernetes` provisioner.
    pub kubernetes: KubernetesProvisionerConfig,
}

/// Provisioners of dedicated runners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionerKind {
    /// A child `wafer worker` process per job.
    Local,
    /// A child `wafer worker` process per job that boots a microVM for it.
    Vm,
    /// Operator commands that launch and tear down a runner (a VM, a container…).
    Command,
    /// A Kubernetes batch/v1 Job per job, from a template.
    Kubernetes,
}

/// The `command` provisioner: `launch` starts a runner for a job and prints a handle (its
/// first line of output); `teardown` removes it. Both get the job and how to reach the
/// server in their environment (see docs/architecture.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandProvisionerConfig {
    /// Program and arguments that launch a runner.
    pub launch: Vec<String>,
    /// Program and arguments that tear one down.
    pub teardown: Vec<String>,
    /// Time each command may take, ms.
    pub timeout_ms: u64,
}

/// The `kubernetes` provisioner: renders `template` (a batch/v1 Job as JSON with
/// `{{placeholders}}`) and applies it with `kubectl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesProvisionerConfig {
    /// The Job template.
    pub template: std::path::PathBuf,
    /// The namespace runners run in.
    pub namespace: String,
    /// The container image with the `wafer` binary.
    pub image: String,
    /// No longer used: each runner gets a Secret of its own with its claim's credential.
    /// Accepted so that older configuration files still load.
    pub secret: String,
    /// The server's URL as runners in the cluster reach it.
    pub server_url: String,
    /// The kubectl program (and leading arguments, e.g. a context).
    pub kubectl: Vec<String>,
}

impl Default for CommandProvisionerConfig {
    fn default() -> Self {
        Self {
            launch: Vec::new(),
            teardown: Vec::new(),
            timeout_ms: 120_000,
        }
    }
}

impl Default for KubernetesProvisionerConfig {
    fn default() -> Self {
        Self {
            template: "deploy/kubernetes/runner-job.json".into(),
            namespace: "wafer".into(),
            image: "ghcr.io/wafer/wafer:latest".into(),
            secret: "wafer-runner".into(),
            server_url: "http://wafer.wafer.svc:8080".into(),
            kubectl: vec!["kubectl".into()],
        }
    }
}

impl Default for LongLaneConfig {
    fn default() -> Self {
        Self {
            max_runners: 2,
            max_per_tenant: 1,
            max_timeout_ms: 4 * 3_600_000,
            fuel: 100_000_000_000_000,
            memory_mb: 0,
            start_timeout_ms: 60_000,
            provisioner: ProvisionerKind::Local,
            vm: wafer_worker::vm::VmOptions::default(),
            command: CommandProvisionerConfig::default(),
            kubernetes: KubernetesProvisionerConfig::default(),
        }
    }
}

impl JobsConfig {
    /// Jobs the server runs at once in each of its own lanes.
    pub fn inline_per_lane(&self, max_inflight: usize) -> usize {
        match self.inline_concurrency {
            0 => (max_inflight / 2).max(1),
            n => n,
        }
    }

    /// Each lane's per-tenant share: `tenant_share_percent` of the lane's slots (the server's
    /// own for the fast lane, and for the default lane without workers; the workers' for the
    /// default lane), and `long.max_per_tenant` for the long lane.
    pub fn shares(&self, max_inflight: usize) -> wafer_core::LaneShares {
        let share = |slots: usize| {
            let n = slots as u64 * u64::from(self.tenant_share_percent.min(100)) / 100;
            n.clamp(1, u64::from(u32::MAX)) as u32
        };
        let inline = self.inline_per_lane(max_inflight);
        let default = match self.workers {
            0 => inline,
            w => w * self.worker_concurrency.max(1),
        };
        wafer_core::LaneShares {
            fast: share(inline),
            default: share(default),
            long: self.long.max_per_tenant.clamp(1, u32::MAX as usize) as u32,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            ttl_s: 7 * 86_400,
            lease_ms: 30_000,
            max_deliveries: 3,
            inline_concurrency: 0,
            tenant_share_percent: 75,
            max_jobs_per_tenant: 10_000,
            max_job_storage_mb_per_tenant: 1_024,
            min_free_disk_mb: 256,
            fast_lane_ms: 5_000,
            max_timeout_ms: 900_000,
            max_wait_s: 60,
            max_waits: 10_000,
            max_waits_per_tenant: 100,
            submit_buffer_mb: 128,
            submit_wait_ms: 10_000,
            sweep_interval_ms: 60_000,
            workers: 2,
            worker_concurrency: 4,
            worker_idle_ms: 30_000,
            webhook_attempts: 6,
            webhook_backoff_ms: 1_000,
            webhook_timeout_ms: 10_000,
            webhook_allow_private: false,
            webhook_max_in_flight: 64,
            webhook_proxy: String::new(),
            long_lane_ms: 60_000,
            inline_budget_ms: 30_000,
            long: LongLaneConfig::default(),
        }
    }
}

/// Defaults for a version's limits and the most a version may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionDefaults {
    /// Default wall-clock timeout, ms.
    pub timeout_ms: u64,
    /// Largest timeout a version may set, ms.
    pub max_timeout_ms: u64,
    /// Default memory limit, MiB.
    pub memory_mb: u64,
    /// Default fuel.
    pub fuel: u64,
    /// Largest fuel a version may set.
    pub max_fuel: u64,
    /// Largest stdout a command may write, bytes.
    pub max_stdout_bytes: usize,
    /// Largest response body an HTTP function may send, bytes.
    pub max_response_bytes: usize,
    /// Log (stderr) tail kept per invocation, bytes.
    pub max_log_bytes: usize,
}

impl FunctionDefaults {
    /// The caps on an invocation's output.
    pub fn caps(&self) -> wafer_worker::OutputCaps {
        wafer_worker::OutputCaps {
            stdout_bytes: self.max_stdout_bytes,
            stderr_bytes: self.max_log_bytes,
            response_bytes: self.max_response_bytes,
        }
    }
}

impl Default for FunctionDefaults {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            max_timeout_ms: 300_000,
            memory_mb: 64,
            fuel: 10_000_000_000,
            max_fuel: 10_000_000_000_000,
            max_stdout_bytes: 8 << 20,
            max_response_bytes: 8 << 20,
            max_log_bytes: 64 << 10,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_listen: None,
            data_dir: PathBuf::from(".wafer"),
            max_module_bytes: 64 << 20,
            max_request_bytes: 16 << 20,
            max_json_bytes: 1 << 20,
            body_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            max_connections: 4096,
            shutdown_grace_ms: 30_000,
            max_inflight: engine.max_instances as usize,
            max_inflight_per_tenant: engine.max_instances as usize * 3 / 4,
            memory_budget_mb: 0,
            max_compiles: 2,
            compile_wait_ms: 30_000,
            compile_timeout_ms: 20_000,
            compile_memory_mb: 4096,
            gc_interval_s: 3600,
            gc_grace_s: 86_400,
            quotas: wafer_core::Quotas::default(),
            functions: FunctionDefaults::default(),
            engine,
            hot_modules: 1024,
            jobs: JobsConfig::default(),
            queue: QueueConfig::default(),
            cache: crate::cache::CacheConfig::default(),
        }
    }
}
