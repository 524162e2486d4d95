//! The host side of a job in a microVM: boots the guest image (Debian's kernel, `wafer` as
//! the guest agent, see `cli/src/guest_agent.rs` and `scripts/vm-image.py`) with
//! `qemu-system-x86_64 -M microvm`, hands the agent the work order, the module and the input
//! over the virtio-serial port `wafer.0` (a Unix socket on this side; the guest has no
//! network), and returns how the job ended. The VM exists for this one job: it is powered off
//! after, killed if this future is dropped (cancel, deadline), and killed with its parent
//! process (`PR_SET_PDEATHSIG`), so no qemu outlives the runner that started it. Each VM is
//! named after its server (`-name`), so a server sweeps those of an earlier run at start.
//!
//! KVM is used when it works: `choose_accel` boots a probe guest under KVM and keeps KVM only
//! if that guest's agent says ready in time; otherwise the VMs are emulated (TCG).

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use wafer_core::{JobEnd, WorkOrder};

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
    crate::jobs::end_message_bytes(
        order.response_bytes.max(order.stdout_bytes),
        order.stderr_bytes,
    )
}

/// The guest's side of the channel, read a line at a time, each line bounded: a guest that
/// sends an endless line is cut off, not buffered.
struct GuestLines<R = BufReader<OwnedReadHalf>>(R);

impl<R: tokio::io::AsyncBufRead + Unpin> GuestLines<R> {
    /// The next line (without its newline), None at the end of the channel; an error for a
    /// line longer than `most` bytes or one that is not UTF-8.
    async fn next_line(&mut self, most: usize) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.0)
            .take(most as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > most {
            bail!("the guest sent a line longer than {most} bytes");
        }
        Ok(Some(
            String::from_utf8(buf).context("the guest sent a line that is not UTF-8")?,
        ))
    }
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
    ready: Value,
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
                serde_json::from_str::<Value>(&line).context("the agent's ready line")?
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
        let _ = self.writer.write_all(b"{\"op\":\"poweroff\"}\n").await;
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
    let mut end: JobEnd = serde_json::from_value(answer["end"].clone())
        .context("the job's end")
        .map_err(VmError::Run)?;
    let output = base64::engine::general_purpose::STANDARD
        .decode(answer["output_base64"].as_str().unwrap_or_default())
        .context("the job's output")
        .map_err(VmError::Run)?;
    end.runner = Some(json!({
        "kind": "vm",
        "kernel": guest.ready["kernel"],
        "guest_boot_ms": guest.ready["boot_ms"],
        "ready_ms": guest.ready_ms,
        "compile_ms": answer["compile_ms"],
        "precompiled": answer["precompiled"],
        "guest_fingerprint": answer["fingerprint"],
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
) -> Result<Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let compiled = compiled.map(
        |(fingerprint, code)| json!({"fingerprint": fingerprint, "code_base64": b64.encode(&code)}),
    );
    let request = json!({
        "op": "run",
        "order": order,
        "module_base64": b64.encode(module),
        "input_base64": b64.encode(input),
        "engine": engine,
        "compiled": compiled,
    });
    guest
        .writer
        .write_all(format!("{request}\n").as_bytes())
        .await?;
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
        let line: Value = serde_json::from_str(&line).context("the agent's answer")?;
        if line["op"] == "started" && !started {
            started = true;
            bound = Duration::from_millis(order.timeout_ms) + RUN_GRACE;
            continue;
        }
        break line;
    };
    if let Some(e) = answer["error"].as_str() {
        bail!("the guest agent refused the job: {e}");
    }
    Ok(answer)
}

/// The end of a job whose VM failed (never ready, stopped, refused): a 503 `vm-failed`
/// problem with the reason; the job is not run again.
pub fn failed(e: &VmError) -> JobEnd {
    let problem = crate::problem::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "vm-failed",
        "Virtual machine failed",
        e.to_string(),
    );
    JobEnd {
        status: wafer_core::JobStatus::Failed,
        error: Some(problem.body(None)),
        result: None,
        stderr: String::new(),
        runner: Some(json!({"kind": "vm"})),
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

fn spawn(
    opts: &VmOptions,
    accel: Accel,
    image: &Image,
    socket: &Path,
    memory_mb: u64,
    label: &str,
) -> Result<tokio::process::Child> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Auto | Accel::Tcg => ("tcg", "max"),
    };
    let mut cmd = tokio::process::Command::new(&opts.qemu);
    cmd.args(["-name", label])
        .args([
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
        ])
        .arg("-m")
        .arg(memory_mb.to_string())
        .arg("-smp")
        .arg(opts.vcpus.max(1).to_string())
        // The console goes to qemu's standard output, a pipe that `Console` drains.
        .arg("-serial")
        .arg("file:/dev/stdout")
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 tsc_early_khz={}{}",
            tsc_khz(),
            guest_crash_point()
        ))
        .args(["-device", "virtio-serial-device", "-chardev"])
        .arg(format!(
            "socket,path={},server=on,wait=off,id=agent",
            socket.display()
        ))
        .args(["-device", "virtserialport,chardev=agent,name=wafer.0"])
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

/// How much of a guest's console is kept: its last 64 KiB.
const CONSOLE_KEPT: usize = 64 << 10;

/// The tail of a guest's console, read from qemu's output as it comes (so a guest that
/// floods its console neither fills a disk nor stalls on a full pipe).
#[derive(Clone, Default)]
struct Console(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u8>>>);

impl Console {
    /// Drains `out` into a new console tail, in the background, until qemu closes it.
    fn drain(out: Option<tokio::process::ChildStdout>) -> Console {
        let console = Console::default();
        if let Some(mut out) = out {
            let kept = console.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.push(&buf[..n]);
                }
            });
        }
        console
    }

    fn push(&self, bytes: &[u8]) {
        let mut q = self.0.lock().expect("console");
        q.extend(bytes);
        let over = q.len().saturating_sub(CONSOLE_KEPT);
        q.drain(..over);
    }

    fn text(&self) -> String {
        let q = self.0.lock().expect("console");
        String::from_utf8_lossy(&q.iter().copied().collect::<Vec<u8>>()).into_owned()
    }

    /// What the console says of a failure: its kernel panic line when there is one, else
    /// its last lines.
    fn tail(&self) -> String {
        let text = self.text();
        if let Some(panic) = text.lines().find(|l| l.contains("Kernel panic")) {
            return format!("; its console says: {}", panic.trim());
        }
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        if tail.is_empty() {
            String::new()
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("; its console ended: {}", tail.join(" | "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_keeps_its_last_64_kib() {
        let c = Console::default();
        for i in 0..100 {
            c.push(format!("line {i} {}\n", "x".repeat(2000)).as_bytes());
        }
        c.push(b"Kernel panic - not syncing: the end\n");
        let text = c.text();
        assert_eq!(text.len(), CONSOLE_KEPT);
        assert!(text.ends_with("the end\n"));
        assert_eq!(
            c.tail(),
            "; its console says: Kernel panic - not syncing: the end"
        );
    }

    #[tokio::test]
    async fn lines_from_the_guest_are_bounded() {
        let mut lines = GuestLines(&b"{\"a\":1}\nshort\nthis one is far too long\n"[..]);
        assert_eq!(lines.next_line(10).await.unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(lines.next_line(10).await.unwrap().unwrap(), "short");
        let e = lines.next_line(10).await.unwrap_err();
        assert!(e.to_string().contains("longer than 10 bytes"), "{e}");
        let mut end = GuestLines(&b"exactly10!\nlast"[..]);
        assert_eq!(end.next_line(10).await.unwrap().unwrap(), "exactly10!");
        assert_eq!(end.next_line(10).await.unwrap().unwrap(), "last");
        assert_eq!(end.next_line(10).await.unwrap(), None);
    }
}
