//! Jobs in microVMs. This module is the host side: it boots the guest image (Debian's kernel,
//! `wafer` as the guest agent, see [`agent`] and `scripts/vm-image.py`) with
//! `qemu-system-x86_64 -M microvm`, hands the agent the work order, the module and the input
//! over the virtio-serial port `wafer.0` (a Unix socket on this side; the guest has no
//! network), and returns how the job ended. The VM exists for this one job: it is powered off
//! after, killed if this future is dropped (cancel, deadline), and killed with its parent
//! process (`PR_SET_PDEATHSIG`), so no qemu outlives the runner that started it. Each VM is
//! named after its server (`-name`), so a server sweeps those of an earlier run at start.
//!
//! KVM is used when it works: `choose_accel` boots a probe guest under KVM and keeps KVM only
//! if that guest's agent says ready in time; otherwise the VMs are emulated (TCG).

use crate::order::WorkOrder;
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use machine::Guest;
use protocol::{Answer, Ended, Precompiled, Request, RunRequest};
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wafer_core::{JobEnd, Problem};

pub mod agent;
mod channel;
mod machine;
mod options;
pub mod protocol;

pub use machine::{qemu_command, sweep, sweep_scratch};
pub use options::{Accel, Fallback, VmOptions};

/// What a job in a VM gave: its end, its output, and what the guest said of itself.
pub struct GuestRun {
    /// How the job ended, with `runner` set to the guest's report.
    pub end: JobEnd,
    /// The output bytes.
    pub output: Bytes,
}

/// Why a job's VM did not give its end.
#[derive(Debug)]
pub enum VmError {
    /// The VM never got as far as a ready agent: the job did not start in it.
    Boot(anyhow::Error),
    /// The VM failed while it held the job.
    Run(anyhow::Error),
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Boot(e) | VmError::Run(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for VmError {}

/// How long a guest may take to compile a job's module before it starts it.
const COMPILE_BOUND: Duration = Duration::from_secs(120);

/// How long past a job's timeout a guest may take to answer before its VM is given up.
const RUN_GRACE: Duration = Duration::from_secs(5);

/// The longest answer a guest agent may send for `order`: its end with a whole output and a
/// whole log.
fn answer_line_limit(order: &WorkOrder) -> usize {
    crate::end::end_message_bytes(
        order.caps.response_bytes.max(order.caps.stdout_bytes),
        order.caps.stderr_bytes,
    )
}

/// Boots a VM for `order`, runs it there, powers the VM off.
///
/// `compiled` is the module's code compiled on the host and that code's engine fingerprint:
/// the guest uses it when its own fingerprint (engine and CPU) is the same, else compiles.
pub async fn run(
    opts: &VmOptions,
    order: &WorkOrder,
    module: Bytes,
    compiled: Option<(&str, Bytes)>,
    input: &[u8],
    engine: &wafer_runner::EngineConfig,
) -> Result<GuestRun, VmError> {
    let memory_mb = order.memory_mb + opts.memory_overhead_mb;
    // A runner given `auto` (started by hand) has not probed: it emulates.
    let accel = match opts.accel {
        Accel::Auto => Accel::Tcg,
        a => a,
    };
    let label = format!("{}:{}", opts.name, order.job.as_str());
    let mut guest = Guest::boot(
        opts,
        accel,
        memory_mb,
        &label,
        Duration::from_millis(opts.boot_timeout_ms),
    )
    .await
    .map_err(VmError::Boot)?;
    let answer = exchange(&mut guest, order, &module, compiled, input, engine)
        .await
        .map_err(VmError::Run)?;
    let mut end = answer.end;
    let output = base64::engine::general_purpose::STANDARD
        .decode(answer.output_base64.as_bytes())
        .context("the job's output")
        .map_err(VmError::Run)?;
    end.runner = Some(json!({
        "kind": "vm",
        "kernel": guest.ready.kernel,
        "guest_boot_ms": guest.ready.boot_ms,
        "ready_ms": guest.ready_ms,
        "compile_ms": answer.compile_ms,
        "precompiled": answer.precompiled,
        "guest_fingerprint": answer.fingerprint,
        "accel": accel.as_str(),
        "memory_mb": memory_mb,
        "vcpus": opts.vcpus,
    }));
    guest.poweroff().await;
    Ok(GuestRun {
        end,
        output: Bytes::from(output),
    })
}

/// Sends the job to the ready guest and reads its answer.
async fn exchange(
    guest: &mut Guest,
    order: &WorkOrder,
    module: &[u8],
    compiled: Option<(&str, Bytes)>,
    input: &[u8],
    engine: &wafer_runner::EngineConfig,
) -> Result<Ended> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = Request::Run(Box::new(RunRequest {
        order: order.clone(),
        module_base64: b64.encode(module),
        input_base64: b64.encode(input),
        engine: Some(engine.clone()),
        compiled: compiled.map(|(fingerprint, code)| Precompiled {
            fingerprint: fingerprint.to_owned(),
            code_base64: b64.encode(&code),
        }),
    }));
    let line = serde_json::to_string(&request)? + "\n";
    guest.writer.write_all(line.as_bytes()).await?;
    // Compiling (under emulation, slow) has its own bound; once the guest says the job
    // started, it ends the job at its deadline, and a VM that has not answered by then and a
    // short grace is given up.
    let most = answer_line_limit(order);
    let mut bound = COMPILE_BOUND;
    let mut started = false;
    let answer = loop {
        let line = match tokio::time::timeout(bound, guest.lines.next_line(most)).await {
            Ok(line) => line?.ok_or_else(|| {
                anyhow::anyhow!("the VM stopped during the job{}", guest.console.tail())
            })?,
            Err(_) if started => bail!(
                "the VM did not answer within the job's timeout and {} ms more",
                RUN_GRACE.as_millis()
            ),
            Err(_) => bail!(
                "the VM did not compile the module within {} s",
                COMPILE_BOUND.as_secs()
            ),
        };
        match serde_json::from_str(&line).context("the agent's answer")? {
            Answer::Started { .. } if !started => {
                started = true;
                bound = Duration::from_millis(order.timeout_ms) + RUN_GRACE;
            }
            Answer::End(ended) => break ended,
            Answer::Error { error } => bail!("the guest agent refused the job: {error}"),
            other => bail!("the guest agent answered out of turn: {other:?}"),
        }
    };
    Ok(*answer)
}

/// The end of a job whose VM failed (never ready, stopped, refused): a 503 `vm-failed`
/// problem with the reason; the job is not run again.
pub fn failed(e: &VmError) -> JobEnd {
    let problem = Problem::new(503, "vm-failed", "Virtual machine failed", e.to_string());
    JobEnd {
        status: wafer_core::JobStatus::Failed,
        error: Some(problem.body(None)),
        result: None,
        stderr: String::new(),
        runner: Some(json!({"kind": "vm"})),
    }
}

/// A dedicated runner's job in a microVM of its own, with these options (acceleration
/// chosen by the server).
pub struct InVm(pub VmOptions);

#[async_trait::async_trait]
impl crate::executor::Executor for InVm {
    async fn execute(
        &self,
        server: &crate::client::ServerClient,
        runner: &wafer_runner::Runner,
        order: &WorkOrder,
        input: Bytes,
    ) -> anyhow::Result<(JobEnd, Bytes)> {
        let vm = &self.0;
        // The guest compiles the module itself, from the module's bytes.
        let module = server
            .module(&order.module)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server has no module {}", order.module))?;
        // Under KVM the guest's CPU is the host's (`-cpu host`): the host's compiled code
        // may fit it (the guest checks). An emulated CPU is another one: not worth sending.
        let compiled = match vm.accel {
            Accel::Kvm => server
                .compiled(runner.fingerprint(), &order.module)
                .await
                .ok()
                .flatten(),
            _ => None,
        };
        let compiled = compiled.map(|code| (runner.fingerprint(), code));
        let engine = runner.engine_config();
        Ok(
            match run(vm, order, module, compiled, &input, engine).await {
                Ok(run) => (run.end, run.output),
                Err(VmError::Boot(e)) if vm.fallback == Fallback::Local => {
                    // Configured to fall back: the job runs here, and its record says why.
                    let reason = format!("{e:#}");
                    tracing::warn!(job = order.job.as_str(), %reason, "the VM did not boot: running the job outside a VM");
                    let (mut end, output) = crate::executor::Here
                        .execute(server, runner, order, input)
                        .await?;
                    end.runner = Some(json!({
                        "kind": "local",
                        "fallback_from": "vm",
                        "reason": reason,
                    }));
                    (end, output)
                }
                Err(e) => (failed(&e), Bytes::new()),
            },
        )
    }
}

/// The acceleration a server's VMs get, and how it was chosen.
#[derive(Debug, Clone)]
pub struct AccelChoice {
    /// `kvm` or `tcg`.
    pub accel: Accel,
    /// `configured`, `ok` (the probe guest booted under KVM), `no-device`, `no-access` or
    /// `no-progress` (the probe guest did not boot under KVM in time).
    pub probe: &'static str,
    /// What the probe saw.
    pub detail: String,
}

/// Chooses between KVM and TCG for `opts.accel = auto`: KVM only when its device opens and
/// a probe guest boots under it to a ready agent within `probe_timeout_ms` (where nested
/// virtualisation is broken, `/dev/kvm` opens and a VM is made, but never runs).
pub async fn choose_accel(opts: &VmOptions) -> AccelChoice {
    let choice = |accel, probe, detail: String| AccelChoice {
        accel,
        probe,
        detail,
    };
    match opts.accel {
        Accel::Kvm | Accel::Tcg => {
            return choice(opts.accel, "configured", "set by jobs.long.vm.accel".into());
        }
        Accel::Auto => {}
    }
    let dev = &opts.kvm_device;
    if !dev.exists() {
        return choice(
            Accel::Tcg,
            "no-device",
            format!("{} does not exist", dev.display()),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return choice(
            Accel::Tcg,
            "no-access",
            format!("{} does not open: {e}", dev.display()),
        );
    }
    let within = Duration::from_millis(opts.probe_timeout_ms);
    let label = format!("{}:probe", opts.name);
    match Guest::boot(opts, Accel::Kvm, opts.memory_overhead_mb, &label, within).await {
        Ok(guest) => {
            let ms = guest.ready_ms;
            guest.poweroff().await;
            choice(
                Accel::Kvm,
                "ok",
                format!("a probe guest was ready under KVM in {ms} ms"),
            )
        }
        Err(e) => choice(
            Accel::Tcg,
            "no-progress",
            format!("a probe guest did not boot under KVM: {e:#}"),
        ),
    }
}
