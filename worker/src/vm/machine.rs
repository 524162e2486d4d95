//! One VM: its qemu command line (written only here), the process with its console and the
//! agent's socket, its boot to a ready agent and its power-off, and the sweep of VMs and
//! scratch directories an earlier run of a server left.

use super::channel::{Console, GuestLines};
use super::options::{Accel, VmOptions};
use super::protocol::{self, Ready, Request};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

/// The longest ready line a guest agent may send.
const MAX_READY_LINE: usize = 64 << 10;

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

/// A booted VM whose agent has said ready.
pub(super) struct Guest {
    pub(super) qemu: tokio::process::Child,
    pub(super) lines: GuestLines,
    pub(super) writer: OwnedWriteHalf,
    /// Holds the agent's socket (removed with the guest).
    _dir: tempfile::TempDir,
    /// The tail of the guest's console.
    pub(super) console: Console,
    /// The agent's ready line.
    pub(super) ready: Ready,
    /// From qemu's start to the ready line, ms.
    pub(super) ready_ms: u64,
}

impl Guest {
    /// Boots a VM named `label` under `accel` and waits up to `within` for its agent.
    pub(super) async fn boot(
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
    pub(super) async fn poweroff(mut self) {
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
