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
use protocol::{Answer, Ended, Precompiled, Ready, Request, RunRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use wafer_core::{JobEnd, Problem};

pub mod agent;
mod channel;
pub mod protocol;

use channel::{Console, GuestLines};

/// How VMs are accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe guest boots under it in time, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation, `-accel kvm -cpu host`.
    Kvm,
    /// Emulation, `-accel tcg -cpu max`: slow, but works everywhere.
    Tcg,
}

impl Accel {
    /// Its name, as in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What a job does when its VM cannot boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// It fails with the reason (503 `vm-failed`).
    #[default]
    None,
    /// It runs in the runner's own process, as with the `local` provisioner; the job's
    /// record says so, with the reason.
    Local,
}

/// How jobs' VMs are made (`[jobs.long.vm]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmOptions {
    /// The image's `image.json` (from `scripts/vm-image.py`): kernel and initramfs paths.
    pub image: PathBuf,
    /// MiB of VM memory beyond the job's memory limit (kernel, agent, compiler).
    pub memory_overhead_mb: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Time the guest agent has to say ready, ms.
    pub boot_timeout_ms: u64,
    /// The qemu program.
    pub qemu: String,
    /// `auto` (KVM if a probe guest boots under it, else TCG), `kvm` or `tcg`.
    pub accel: Accel,
    /// The KVM device `auto` looks for.
    pub kvm_device: PathBuf,
    /// Time the probe guest has to say ready under KVM, ms.
    pub probe_timeout_ms: u64,
    /// `none` (a VM that cannot boot fails its job) or `local` (the job then runs outside
    /// a VM, recorded on the job).
    pub fallback: Fallback,
    /// The qemu `-name` of this server's VMs (letters, digits, `.`, `_`, `-`); empty: `wafer-`
    /// and a hash of the data directory. VMs of this name left by an earlier run are killed
    /// when the server starts.
    pub name: String,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            image: PathBuf::from("vm/image.json"),
            memory_overhead_mb: 256,
            vcpus: 1,
            boot_timeout_ms: 60_000,
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Auto,
            kvm_device: PathBuf::from("/dev/kvm"),
            probe_timeout_ms: 8_000,
            fallback: Fallback::None,
            name: String::new(),
        }
    }
}

impl VmOptions {
    /// These options as a server with data directory `data_dir` hands them to its runners:
    /// the image's path made absolute, the VMs' name set and checked.
    pub fn for_server(&self, data_dir: &Path) -> Result<VmOptions> {
        let mut vm = self.clone();
        if vm.image.is_relative() {
            vm.image = data_dir.join(&vm.image);
        }
        if vm.name.is_empty() {
            let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
            let hash = <sha2::Sha256 as sha2::Digest>::digest(dir.as_os_str().as_encoded_bytes());
            vm.name = format!("wafer-{}", &hex::encode(hash)[..16]);
        }
        if vm.name.len() > 64
            || !vm
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!(
                "jobs.long.vm.name {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                vm.name
            );
        }
        Ok(vm)
    }
}

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

#[derive(Deserialize)]
struct Image {
    kernel: PathBuf,
    initramfs: PathBuf,
}

/// The host's TSC rate in kHz, for the guest kernel's `tsc_early_khz`: without it, its clock
/// calibration under emulation on a loaded host hangs now and then.
fn tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// How long a guest may take to compile a job's module before it starts it.
const COMPILE_BOUND: Duration = Duration::from_secs(120);

/// How long past a job's timeout a guest may take to answer before its VM is given up.
const RUN_GRACE: Duration = Duration::from_secs(5);

/// The longest ready line a guest agent may send.
const MAX_READY_LINE: usize = 64 << 10;

/// The longest answer a guest agent may send for `order`: its end with a whole output and a
/// whole log.
fn answer_line_limit(order: &WorkOrder) -> usize {
    crate::end::end_message_bytes(
        order.caps.response_bytes.max(order.caps.stdout_bytes),
        order.caps.stderr_bytes,
    )
}

/// A booted VM whose agent has said ready.
struct Guest {
    qemu: tokio::process::Child,
    lines: GuestLines,
    writer: OwnedWriteHalf,
    /// Holds the agent's socket (removed with the guest).
    _dir: tempfile::TempDir,
    /// The tail of the guest's console.
    console: Console,
    /// The agent's ready line.
    ready: Ready,
    /// From qemu's start to the ready line, ms.
    ready_ms: u64,
}

impl Guest {
    /// Boots a VM named `label` under `accel` and waits up to `within` for its agent.
    async fn boot(
        opts: &VmOptions,
        accel: Accel,
        memory_mb: u64,
        label: &str,
        within: Duration,
    ) -> Result<Guest> {
        let image: Image = serde_json::from_slice(
            &tokio::fs::read(&opts.image)
                .await
                .with_context(|| format!("reading the VM image {}", opts.image.display()))?,
        )
        .context("the VM image's image.json")?;
        let dir = tempfile::Builder::new()
            .prefix(&scratch_prefix(&opts.name))
            .tempdir()
            .context("a directory for the VM's socket")?;
        let socket = dir.path().join("agent.sock");
        let booted = Instant::now();
        let mut qemu = spawn(opts, accel, &image, &socket, memory_mb, label)?;
        let console = Console::drain(qemu.stdout.take());
        let stream = connect(&socket, &mut qemu).await?;
        let (reader, writer) = stream.into_split();
        let mut lines = GuestLines(BufReader::new(reader));
        let ready = match tokio::time::timeout(within, lines.next_line(MAX_READY_LINE)).await {
            Ok(Ok(Some(line))) => {
                serde_json::from_str::<Ready>(&line).context("the agent's ready line")?
            }
            Ok(Err(e)) => return Err(e.context("the agent's ready line")),
            Ok(Ok(None)) => bail!(
                "the VM stopped before its agent was ready{}",
                console.tail()
            ),
            Err(_) => bail!(
                "the VM's agent was not ready within {} ms{}",
                within.as_millis(),
                console.tail()
            ),
        };
        Ok(Guest {
            qemu,
            lines,
            writer,
            _dir: dir,
            console,
            ready,
            ready_ms: booted.elapsed().as_millis() as u64,
        })
    }

    /// Asks the guest to power off; kills the VM if it has not within 10 s.
    async fn poweroff(mut self) {
        let line = serde_json::to_string(&Request::Poweroff).expect("serializes") + "\n";
        let _ = self.writer.write_all(line.as_bytes()).await;
        if tokio::time::timeout(Duration::from_secs(10), self.qemu.wait())
            .await
            .is_err()
        {
            let _ = self.qemu.kill().await;
        }
    }
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

/// The prefix of the scratch directories (in the system's temporary directory) of the VMs
/// named `name`.
fn scratch_prefix(name: &str) -> String {
    format!("{name}-vm-")
}

/// Removes the scratch directories of VMs named `name` that an earlier run left (their
/// qemus are gone: [`sweep`] killed them); says how many.
pub fn sweep_scratch(name: &str) -> usize {
    let prefix = scratch_prefix(name);
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

/// Kills every qemu named `name` or `name:…` (the VMs of a server, left by an earlier run of
/// it) and says how many.
pub fn sweep(name: &str) -> usize {
    let prefix = format!("{name}:");
    let mut killed = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.windows(2).any(|w| {
            w[0] == b"-name" && (w[1] == name.as_bytes() || w[1].starts_with(prefix.as_bytes()))
        });
        let is_qemu = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu"));
        // SAFETY: sends a signal; a pid that has gone meanwhile gives ESRCH.
        if ours && is_qemu && unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            killed += 1;
        }
    }
    killed
}

/// A crash point of the guest's for tests (`WAFER_CRASH_AT=guest-…` in the runner's
/// environment), passed to the guest agent on the kernel's command line; else nothing.
fn guest_crash_point() -> String {
    match std::env::var("WAFER_CRASH_AT") {
        Ok(p)
            if p.starts_with("guest-")
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            format!(" WAFER_CRASH_AT={p}")
        }
        _ => String::new(),
    }
}

/// The qemu command line (the program first) that boots `kernel` with `initramfs` as VM
/// `label` under `accel`, with `memory_mb` of memory and the agent's port on the Unix socket
/// `socket`; the guest's console goes to qemu's standard output. The one place it is written:
/// the tests boot their guests with it too (`wafer __vm-command`).
pub fn qemu_command(
    opts: &VmOptions,
    accel: Accel,
    kernel: &Path,
    initramfs: &Path,
    socket: &Path,
    memory_mb: u64,
    label: &str,
) -> Vec<String> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Auto | Accel::Tcg => ("tcg", "max"),
    };
    let mut args: Vec<String> = vec![opts.qemu.clone(), "-name".into(), label.into()];
    args.extend(
        [
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=off",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ]
        .map(String::from),
    );
    args.extend([
        "-m".into(),
        memory_mb.to_string(),
        "-smp".into(),
        opts.vcpus.max(1).to_string(),
        // The console goes to qemu's standard output.
        "-serial".into(),
        "file:/dev/stdout".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initramfs.display().to_string(),
        "-append".into(),
        format!(
            "console=ttyS0 quiet panic=-1 tsc_early_khz={}{}",
            tsc_khz(),
            guest_crash_point()
        ),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,path={},server=on,wait=off,id=agent",
            socket.display()
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={}", protocol::PORT_NAME),
    ]);
    args
}

fn spawn(
    opts: &VmOptions,
    accel: Accel,
    image: &Image,
    socket: &Path,
    memory_mb: u64,
    label: &str,
) -> Result<tokio::process::Child> {
    let args = qemu_command(
        opts,
        accel,
        &image.kernel,
        &image.initramfs,
        socket,
        memory_mb,
        label,
    );
    let mut cmd = tokio::process::Command::new(&args[0]);
    // qemu's standard output is a pipe that `Console` drains.
    cmd.args(&args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: prctl between fork and exec is async-signal-safe; the VM dies with this runner.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", opts.qemu))
}

async fn connect(socket: &Path, qemu: &mut tokio::process::Child) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = UnixStream::connect(socket).await {
            return Ok(s);
        }
        if let Some(status) = qemu.try_wait()? {
            bail!("qemu exited at once ({status})");
        }
        if Instant::now() > deadline {
            bail!("qemu did not open the agent's socket within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
