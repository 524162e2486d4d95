//! How a job runs: its [`WorkOrder`] (built once, by the server, from the job and the version
//! it was submitted for), the [`Limits`] of an invocation ([`limits_of`], the one place they
//! are made), and [`run`], which every route shares: synchronous calls and jobs in the
//! server's pool, `wafer worker`, dedicated runners and the VM's guest agent.

use crate::call::{Call, input_of};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use wafer_core::{
    Abi, Digest, FunctionName, FunctionRecord, JobId, JobRecord, RequestHead, VersionRecord,
};
use wafer_runner::{Invocation, InvokeError, Limits, Outcome, Runner};

/// The most output an invocation may give: the server's `functions.max_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCaps {
    /// Largest stdout, bytes.
    pub stdout_bytes: usize,
    /// Stderr tail kept, bytes.
    pub stderr_bytes: usize,
    /// Largest HTTP response body, bytes.
    pub response_bytes: usize,
}

/// The limits of one invocation: `timeout`, `fuel` and `memory_mb`, with `caps` on its output.
pub fn limits_of(timeout: Duration, fuel: u64, memory_mb: u64, caps: OutputCaps) -> Limits {
    Limits {
        timeout,
        fuel,
        memory_bytes: (memory_mb as usize) << 20,
        table_elements: wafer_runner::limits::MAX_TABLE_ELEMENTS,
        stdout_bytes: caps.stdout_bytes,
        stderr_bytes: caps.stderr_bytes,
        response_bytes: caps.response_bytes,
    }
}

/// Everything a runner in another process needs to run a job, without access to the
/// metadata: the server resolves the function's version and hands this over at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkOrder {
    /// The job.
    pub job: JobId,
    /// The function's name (the command's `argv[0]`).
    pub function: FunctionName,
    /// The version that runs.
    pub version: u32,
    /// The module to run.
    pub module: Digest,
    /// How the module talks.
    pub abi: Abi,
    /// Wall-clock limit, ms.
    pub timeout_ms: u64,
    /// Fuel.
    pub fuel: u64,
    /// Memory limit, MiB.
    pub memory_mb: u64,
    /// The most output it may give.
    #[serde(flatten)]
    pub caps: OutputCaps,
    /// The function's environment.
    pub env: Vec<(String, String)>,
    /// Whether a command also gets `WAFER_METHOD` and `WAFER_PATH`.
    #[serde(default)]
    pub request_env: bool,
    /// The request replayed to it.
    pub request: RequestHead,
}

impl WorkOrder {
    /// The order for job `rec`, which runs `version` of `function`, with `caps` on its output.
    /// Its fuel and memory are the version's; a route that grants more sets them after.
    pub fn new(
        rec: &JobRecord,
        function: &FunctionRecord,
        version: &VersionRecord,
        caps: OutputCaps,
    ) -> Self {
        let spec = &version.spec;
        WorkOrder {
            job: rec.id.clone(),
            function: function.name.clone(),
            version: version.version,
            module: spec.module.clone(),
            abi: spec.abi,
            timeout_ms: rec.timeout_ms,
            fuel: spec.fuel,
            memory_mb: spec.memory_mb,
            caps,
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            request_env: spec.request_env,
            request: rec.request.clone(),
        }
    }

    /// Its invocation's limits.
    pub fn limits(&self) -> Limits {
        limits_of(
            Duration::from_millis(self.timeout_ms),
            self.fuel,
            self.memory_mb,
            self.caps,
        )
    }

    /// What runs, for [`run`].
    pub fn what(&self) -> Run<'_> {
        Run {
            module: &self.module,
            argv0: self.function.as_str(),
            abi: self.abi,
            request_env: self.request_env,
            env: self.env.clone(),
            limits: self.limits(),
        }
    }
}

/// One invocation to make: the module, how it talks, its environment and limits.
pub struct Run<'a> {
    /// The module (its compiled code is in the runner's artifact store, or it is compiled).
    pub module: &'a Digest,
    /// The command's `argv[0]`: the function's name.
    pub argv0: &'a str,
    /// How the module talks.
    pub abi: Abi,
    /// Whether a command also gets `WAFER_METHOD` and `WAFER_PATH`.
    pub request_env: bool,
    /// The function's environment.
    pub env: Vec<(String, String)>,
    /// Its limits.
    pub limits: Limits,
}

impl<'a> Run<'a> {
    /// An invocation of `version` of `function` with `limits`.
    pub fn of_version(
        function: &'a FunctionRecord,
        version: &'a VersionRecord,
        limits: Limits,
    ) -> Self {
        Run {
            module: &version.spec.module,
            argv0: function.name.as_str(),
            abi: version.spec.abi,
            request_env: version.spec.request_env,
            env: version
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            limits,
        }
    }
}

/// Runs `what` on `call` with `runner`; the flag is true on a cold start (the module was not
/// hot).
pub async fn run(
    runner: &Runner,
    what: Run<'_>,
    call: Call,
) -> Result<(Outcome, bool), InvokeError> {
    let mut env = what.env;
    let input = input_of(what.abi, what.request_env, &mut env, call)?;
    let (prepared, cold) = runner.prepare(what.module).await?;
    let invocation = Invocation {
        limits: what.limits,
        args: vec![what.argv0.to_owned()],
        env,
        input,
    };
    runner.invoke(prepared, invocation).await.map(|o| (o, cold))
}

/// Runs a work order on `input` with `runner`, whose artifact store holds the order's module
/// (or its compiled code).
pub async fn execute_order(
    runner: &Runner,
    order: &WorkOrder,
    input: Bytes,
) -> Result<(Outcome, bool), InvokeError> {
    run(runner, order.what(), Call::replay(&order.request, input)).await
}
