//! The host side of a job in a microVM: boots the guest image (Debian's kernel, `wafer` as
//! the guest agent, see `cli/src/guest_agent.rs` and `scripts/vm-image.py`) with
//! `qemu-system-x86_64 -M microvm`, hands the agent the work order, the module and the input
//! over the virtio-serial port `wafer.0` (a Unix socket on this side; the guest has no
//! network), and returns how the job ended. The VM exists for this one job: it is powered off
//! after, killed if this future is dropped (cancel, deadline), and killed with its parent
//! process (`PR_SET_PDEATHSIG`), so no qemu outlives the runner that started it.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use wafer_core::{JobEnd, WorkOrder};

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
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            image: PathBuf::from("vm/image.json"),
            memory_overhead_mb: 256,
            vcpus: 1,
            boot_timeout_ms: 60_000,
            qemu: "qemu-system-x86_64".into(),
        }
    }
}

/// What a job in a VM gave: its end, its output, and what the guest said of itself.
pub struct GuestRun {
    /// How the job ended, with `runner` set to the guest's report.
    pub end: JobEnd,
    /// The output bytes.
    pub output: Bytes,
}

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

/// Boots a VM for `order`, runs it there, powers the VM off.
pub async fn run(
    opts: &VmOptions,
    order: &WorkOrder,
    module: Bytes,
    input: &[u8],
    engine: &wafer_runner::EngineConfig,
) -> Result<GuestRun> {
    let image: Image = serde_json::from_slice(
        &tokio::fs::read(&opts.image)
            .await
            .with_context(|| format!("reading the VM image {}", opts.image.display()))?,
    )
    .context("the VM image's image.json")?;
    let dir = tempfile::tempdir().context("a directory for the VM's socket")?;
    let socket = dir.path().join("agent.sock");
    let memory_mb = order.memory_mb + opts.memory_overhead_mb;
    let booted = Instant::now();
    let mut qemu = spawn(opts, &image, &socket, memory_mb, dir.path())?;
    let stream = connect(&socket, &mut qemu).await?;
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let boot = Duration::from_millis(opts.boot_timeout_ms);
    let ready = match tokio::time::timeout(boot, lines.next_line()).await {
        Ok(Ok(Some(line))) => {
            serde_json::from_str::<Value>(&line).context("the agent's ready line")?
        }
        Ok(_) => bail!(
            "the VM stopped before its agent was ready{}",
            console_tail(dir.path())
        ),
        Err(_) => bail!(
            "the VM's agent was not ready within {} ms{}",
            opts.boot_timeout_ms,
            console_tail(dir.path())
        ),
    };
    let ready_ms = booted.elapsed().as_millis() as u64;
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = json!({
        "op": "run",
        "order": order,
        "module_base64": b64.encode(&module),
        "input_base64": b64.encode(input),
        "engine": engine,
    });
    writer.write_all(format!("{request}\n").as_bytes()).await?;
    // The guest ends the job at its deadline; a VM that does not answer by then (and a
    // margin for compiling under emulation) is given up.
    let bound = Duration::from_millis(order.timeout_ms) + Duration::from_secs(120);
    let answer = match tokio::time::timeout(bound, lines.next_line()).await {
        Ok(line) => line?.ok_or_else(|| {
            anyhow::anyhow!("the VM stopped during the job{}", console_tail(dir.path()))
        })?,
        Err(_) => bail!("the VM did not answer within {} ms", bound.as_millis()),
    };
    let answer: Value = serde_json::from_str(&answer).context("the agent's answer")?;
    if let Some(e) = answer["error"].as_str() {
        bail!("the guest agent refused the job: {e}");
    }
    let mut end: JobEnd = serde_json::from_value(answer["end"].clone()).context("the job's end")?;
    let output = b64
        .decode(answer["output_base64"].as_str().unwrap_or_default())
        .context("the job's output")?;
    end.runner = Some(json!({
        "kind": "vm",
        "kernel": ready["kernel"],
        "guest_boot_ms": ready["boot_ms"],
        "ready_ms": ready_ms,
        "compile_ms": answer["compile_ms"],
        "accel": "tcg",
        "memory_mb": memory_mb,
        "vcpus": opts.vcpus,
    }));
    let _ = writer.write_all(b"{\"op\":\"poweroff\"}\n").await;
    if tokio::time::timeout(Duration::from_secs(10), qemu.wait())
        .await
        .is_err()
    {
        let _ = qemu.kill().await;
    }
    Ok(GuestRun {
        end,
        output: Bytes::from(output),
    })
}

/// The end of a job whose VM failed (never ready, stopped, refused): a 503 `vm-failed`
/// problem with the reason; the job is not run again.
pub fn failed(e: &anyhow::Error) -> JobEnd {
    let problem = crate::problem::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "vm-failed",
        "Virtual machine failed",
        format!("{e:#}"),
    );
    JobEnd {
        status: wafer_core::JobStatus::Failed,
        error: Some(problem.body(None)),
        result: None,
        stderr: String::new(),
        runner: Some(json!({"kind": "vm"})),
    }
}

fn spawn(
    opts: &VmOptions,
    image: &Image,
    socket: &Path,
    memory_mb: u64,
    dir: &Path,
) -> Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&opts.qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=off",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-m")
    .arg(memory_mb.to_string())
    .arg("-smp")
    .arg(opts.vcpus.max(1).to_string())
    .arg("-serial")
    .arg(format!("file:{}", dir.join("console.log").display()))
    .arg("-kernel")
    .arg(&image.kernel)
    .arg("-initrd")
    .arg(&image.initramfs)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet panic=-1 tsc_early_khz={}",
        tsc_khz()
    ))
    .args(["-device", "virtio-serial-device", "-chardev"])
    .arg(format!(
        "socket,path={},server=on,wait=off,id=agent",
        socket.display()
    ))
    .args(["-device", "virtserialport,chardev=agent,name=wafer.0"])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
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

/// What the guest's console says of a failure: its kernel panic line when there is one,
/// else its last lines.
fn console_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
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
