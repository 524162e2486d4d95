//! The guest agent: `wafer` as `/init` (PID 1) of the microVM that the `vm` provisioner boots
//! for one long job. It sets up the little a guest needs (devtmpfs, proc, sysfs, the virtio
//! modules of Debian's kernel), finds the virtio-serial port named `wafer.0` and speaks JSON
//! lines on it with the host side of the provisioner, which alone talks to the queue. The
//! guest has no network device.
//!
//! Protocol: the agent first writes `{"agent":"ready","kernel":…,"boot_ms":…}` (the kernel
//! release and the time since the kernel started), then answers each request line:
//! - `{"op":"run","order":<WorkOrder>,"module_base64":…,"input_base64":…,"engine":<EngineConfig>?}`
//!   → `{"op":"started","compile_ms":…}` once the module is compiled and the job starts (the
//!   host then gives the guest the job's timeout and a short grace, no more), then
//!   `{"op":"end","end":<JobEnd>,"output_base64":…,"compile_ms":…,"run_ms":…}`: the job run
//!   with the same runner, limits and outcome mapping as `wafer worker`; the guest compiles the
//!   module itself, since its CPU (qemu's) need not have the host's features;
//! - `{"op":"ping"}` → `{"op":"pong","uptime_ms":…}`;
//! - `{"op":"poweroff"}` ends the VM.
//!
//! The host side (`wafer_gateway::vm`) boots the VM and speaks this protocol.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wafer_core::{ArtifactStore, FsArtifactStore, WorkOrder};
use wafer_runner::{CompileMode, EngineConfig, Runner, RunnerConfig};

/// The name the host gives the agent's virtio-serial port (`virtserialport,name=wafer.0`).
pub const PORT_NAME: &str = "wafer.0";
/// The modules to load, in order, one file name per line (written by `scripts/vm-image.py`).
const MODULE_ORDER: &str = "/lib/modules/wafer.order";
/// Where the guest keeps modules and compiled code (the initramfs is a RAM file system).
const ARTIFACTS: &str = "/var/wafer/artifacts";

/// A job to run, as the host sends it.
#[derive(Deserialize)]
struct RunRequest {
    order: WorkOrder,
    module_base64: String,
    #[serde(default)]
    input_base64: String,
    /// The server's engine settings (memory ceiling, stack...); the defaults otherwise.
    #[serde(default)]
    engine: Option<EngineConfig>,
    /// The module's compiled code from the host, used when it was compiled for this guest's
    /// engine and CPU (the same fingerprint); otherwise the guest compiles.
    #[serde(default)]
    compiled: Option<Precompiled>,
}

/// Compiled code offered by the host.
#[derive(Deserialize)]
struct Precompiled {
    /// The fingerprint of the engine (and CPU) it was compiled for.
    fingerprint: String,
    code_base64: String,
}

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
    let ready = json!({"agent": "ready", "kernel": kernel_release(), "boot_ms": uptime_ms()});
    writeln!(out, "{ready}")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut runner: Option<Runner> = None;
    let reader = BufReader::new(out.try_clone()?);
    for line in reader.lines() {
        let line = line?;
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match req["op"].as_str() {
                Some("run") => runtime
                    .block_on(run_job(&mut runner, req, &mut out))
                    .unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
                Some("ping") => json!({"op": "pong", "uptime_ms": uptime_ms()}),
                Some("poweroff") => return Ok(()),
                other => json!({"error": format!("unknown op {other:?}")}),
            },
            Err(e) => json!({"error": format!("not a JSON request: {e}")}),
        };
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

/// Runs one job: its module stored and compiled here, then the order run as a worker would.
async fn run_job(
    runner: &mut Option<Runner>,
    req: Value,
    out: &mut std::fs::File,
) -> Result<Value> {
    let req: RunRequest = serde_json::from_value(req).context("a run request")?;
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
        json!({"op": "started", "compile_ms": compile_ms})
    )?;
    // Tests of the host's bound: a guest that stops answering once its job started.
    if std::env::var("WAFER_CRASH_AT").as_deref() == Ok("guest-hang") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let running = Instant::now();
    let result = wafer_gateway::worker::execute_order(runner, &req.order, input).await;
    let run_ms = running.elapsed().as_millis() as u64;
    let (end, output) = wafer_gateway::jobs::end_of(result);
    Ok(json!({
        "op": "end",
        "end": end,
        "output_base64": b64.encode(&output),
        "compile_ms": compile_ms,
        "run_ms": run_ms,
        "fingerprint": runner.fingerprint(),
        "offered_fingerprint": offered,
        "precompiled": precompiled,
    }))
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
