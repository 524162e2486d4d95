//! The guest agent: `wafer` as `/init` (PID 1) of the microVM that the `vm` provisioner boots
//! for one long job. It sets up the little a guest needs (devtmpfs, proc, sysfs, the virtio
//! modules of Debian's kernel), finds the virtio-serial port named `wafer.0` and speaks JSON
//! lines on it with the host side of the provisioner, which alone talks to the queue. The
//! guest has no network device.
//!
//! It speaks the protocol of [`super::protocol`]; the host side ([`super`]) boots the VM.

use super::protocol::{Answer, Ended, PORT_NAME, Ready, Request, RunRequest};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wafer_core::{ArtifactStore, FsArtifactStore};
use wafer_runner::{CompileMode, Runner, RunnerConfig};

/// The modules to load, in order, one file name per line (written by `scripts/vm-image.py`).
const MODULE_ORDER: &str = "/lib/modules/wafer.order";
/// Where the guest keeps modules and compiled code (the initramfs is a RAM file system).
const ARTIFACTS: &str = "/var/wafer/artifacts";

/// Whether this process is the guest's init: PID 1 started as `/init`.
pub fn is_guest_init() -> bool {
    std::process::id() == 1
        && std::env::args_os()
            .next()
            .is_some_and(|a| Path::new(&a).file_name() == Some("init".as_ref()))
}

/// Runs the agent, then powers the VM off (PID 1 must never return).
pub fn main() -> ! {
    if let Err(e) = run() {
        eprintln!("wafer guest agent: {e:#}");
    }
    // SAFETY: sync and reboot have no memory-safety preconditions; as PID 1 in a VM that
    // exists for one job, powering off is the intended end.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; returning from PID 1 would panic the kernel, which
    // (with panic=-1 and qemu's -no-reboot) ends the VM too.
    std::process::exit(1)
}

fn run() -> Result<()> {
    mount("devtmpfs", "/dev", "devtmpfs")?;
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    load_modules(Path::new(MODULE_ORDER))?;
    let port = find_port(PORT_NAME, Duration::from_secs(10))?;
    // One descriptor for the whole exchange: reopening a port per message can hang.
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .with_context(|| format!("opening {}", port.display()))?;
    let ready = Ready {
        agent: "ready".into(),
        kernel: kernel_release(),
        boot_ms: uptime_ms(),
    };
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut runner: Option<Runner> = None;
    let reader = BufReader::new(out.try_clone()?);
    for line in reader.lines() {
        let line = line?;
        let answer = match parse(&line) {
            Ok(Request::Run(req)) => runtime
                .block_on(run_job(&mut runner, *req, &mut out))
                .map(|ended| Answer::End(Box::new(ended)))
                .unwrap_or_else(|e| Answer::Error {
                    error: format!("{e:#}"),
                }),
            Ok(Request::Ping) => Answer::Pong {
                uptime_ms: uptime_ms(),
            },
            Ok(Request::Poweroff) => return Ok(()),
            Err(error) => Answer::Error { error },
        };
        writeln!(out, "{}", serde_json::to_string(&answer)?)?;
    }
    Ok(())
}

/// A request line, or why it is none.
fn parse(line: &str) -> std::result::Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON request: {e}"))?;
    let op = value["op"].as_str().map(str::to_owned);
    serde_json::from_value(value).map_err(|e| match op.as_deref() {
        Some("run" | "ping" | "poweroff") => format!("a malformed request: {e}"),
        other => format!("unknown op {other:?}"),
    })
}

/// Runs one job: its module stored and compiled here, then the order run as a worker would.
async fn run_job(
    runner: &mut Option<Runner>,
    req: RunRequest,
    out: &mut std::fs::File,
) -> Result<Ended> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let module = b64
        .decode(req.module_base64.as_bytes())
        .context("module_base64")?;
    let input = b64
        .decode(req.input_base64.as_bytes())
        .context("input_base64")?;
    if runner.is_none() {
        std::fs::create_dir_all(ARTIFACTS)?;
        let store: Arc<dyn ArtifactStore> = Arc::new(FsArtifactStore::open(ARTIFACTS)?);
        let config = RunnerConfig {
            engine: req.engine.clone().unwrap_or_default(),
            hot_entries: 16,
            compile: CompileMode::InProcess,
            scratch_dir: std::env::temp_dir(),
        };
        *runner = Some(Runner::new(config, store).map_err(|e| anyhow::anyhow!("{e:#}"))?);
    }
    let runner = runner.as_ref().expect("made above");
    // Code compiled for another CPU or engine would not load: it is only kept when its
    // fingerprint is this guest's. Code that still does not load is compiled again below.
    let offered = req.compiled.as_ref().map(|c| c.fingerprint.clone());
    let mut precompiled = false;
    if let Some(code) = req.compiled
        && code.fingerprint == runner.fingerprint()
    {
        let code = b64
            .decode(code.code_base64.as_bytes())
            .context("compiled.code_base64")?;
        let key = wafer_core::ArtifactKey::compiled(runner.fingerprint(), &req.order.module)?;
        runner.artifacts().put(&key, Bytes::from(code)).await?;
        precompiled = runner.prepare(&req.order.module).await.is_ok();
        if !precompiled {
            runner.artifacts().delete(&key).await?;
        }
    }
    let compiling = Instant::now();
    let compiled = runner
        .compile(Bytes::from(module))
        .await
        .context("compiling the module")?;
    if compiled.digest != req.order.module {
        bail!(
            "the module sent is {}, the order names {}",
            compiled.digest,
            req.order.module
        );
    }
    let compile_ms = compiling.elapsed().as_millis() as u64;
    writeln!(
        out,
        "{}",
        serde_json::to_string(&Answer::Started { compile_ms })?
    )?;
    // Tests of the host's bound: a guest that stops answering once its job started.
    if std::env::var("WAFER_CRASH_AT").as_deref() == Ok("guest-hang") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let running = Instant::now();
    let result = crate::order::execute_order(runner, &req.order, Bytes::from(input)).await;
    let run_ms = running.elapsed().as_millis() as u64;
    let (end, output) = crate::end::end_of(result.map(|(o, _)| o));
    Ok(Ended {
        end,
        output_base64: b64.encode(&output),
        compile_ms,
        run_ms,
        fingerprint: runner.fingerprint().to_owned(),
        offered_fingerprint: offered,
        precompiled,
    })
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<()> {
    std::fs::create_dir_all(target)?;
    let (s, t, f) = (
        CString::new(source)?,
        CString::new(target)?,
        CString::new(fstype)?,
    );
    // SAFETY: the three strings are valid and NUL-terminated for the call; no data argument.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
        if err.raw_os_error() != Some(libc::EBUSY) {
            bail!("mounting {fstype} on {target}: {err}");
        }
    }
    Ok(())
}

/// Loads each module named in `order` (files next to it) with finit_module.
fn load_modules(order: &Path) -> Result<()> {
    let dir = order.parent().unwrap_or(Path::new("/"));
    let list =
        std::fs::read_to_string(order).with_context(|| format!("reading {}", order.display()))?;
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = std::fs::File::open(dir.join(name))
            .with_context(|| format!("opening module {name}"))?;
        let params = CString::default();
        // SAFETY: a valid open descriptor and an empty NUL-terminated parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                params.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                bail!("loading module {name}: {err}");
            }
        }
    }
    Ok(())
}

/// The device of the virtio-serial port called `name`, once the driver has made it.
fn find_port(name: &str, wait: Duration) -> Result<PathBuf> {
    let started = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let named = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                let dev = Path::new("/dev").join(e.file_name());
                if named.trim() == name && dev.exists() {
                    return Ok(dev);
                }
            }
        }
        if started.elapsed() > wait {
            bail!("no virtio-serial port named {name} after {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64)
}
