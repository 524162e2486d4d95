//! The isolated compiler: every upload is compiled in a fresh `wafer __compile` process, under
//! an address-space limit and killed at the time limit. The next process is started (and
//! warmed up: engine built, compiler code paged in) while the current one works, so an upload
//! pays only for compiling its own module.

use super::sandbox::Confinement;
use super::worker::{ENGINE_CONFIG_ENV, WorkerReport};
use crate::engine::EngineConfig;
use crate::error::CompileError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use wafer_core::Abi;

/// Starts compile workers and hands each one a single job.
pub struct IsolatedCompiler {
    program: PathBuf,
    args: Vec<OsString>,
    scratch: PathBuf,
    timeout: Duration,
    memory_bytes: u64,
    engine_json: String,
    next: Mutex<Option<Child>>,
}

impl IsolatedCompiler {
    /// A compiler running `program args…` as its worker; starts the first worker when called
    /// inside a tokio runtime.
    pub fn new(
        engine: &EngineConfig,
        program: PathBuf,
        args: Vec<OsString>,
        scratch: PathBuf,
        timeout: Duration,
        memory_bytes: u64,
    ) -> Self {
        let c = Self {
            program,
            args,
            scratch,
            timeout,
            memory_bytes,
            engine_json: serde_json::to_string(engine).expect("config serializes"),
            next: Mutex::new(None),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            c.prepare_next();
        }
        c
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--confine")
            .arg(&self.scratch)
            .env_clear()
            .env(ENGINE_CONFIG_ENV, &self.engine_json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory_bytes = self.memory_bytes;
        // SAFETY: only async-signal-safe calls (setrlimit, prctl, close_range) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: memory_bytes as libc::rlim_t,
                    rlim_max: memory_bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                super::sandbox::prepare_child()
            });
        }
        cmd.spawn()
    }

    /// Starts the worker for the next job.
    fn prepare_next(&self) {
        match self.spawn() {
            Ok(child) => *self.next.lock().expect("compiler lock") = Some(child),
            Err(e) => tracing::warn!(error = %e, "cannot start a compile worker"),
        }
    }

    /// Compiles `input` into `output` in a worker, within the time limit. Returns the ABI and
    /// how far the worker could confine itself.
    pub async fn compile(
        &self,
        input: &Path,
        output: &Path,
    ) -> Result<(Abi, Option<Confinement>), CompileError> {
        let ready = self.next.lock().expect("compiler lock").take();
        let mut child = match ready {
            Some(c) => c,
            None => self.spawn().map_err(|e| {
                if e.kind() == std::io::ErrorKind::OutOfMemory {
                    // The address-space limit is too small for the worker even to start.
                    CompileError::Resources(format!("cannot start compile worker: {e}"))
                } else {
                    CompileError::Internal(format!("cannot start compile worker: {e}"))
                }
            })?,
        };
        let job = format!("{}\n{}\n", input.display(), output.display());
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that already died shows up below as a failed report.
            let _ = stdin.write_all(job.as_bytes()).await;
        }
        wafer_core::crash_point("compiling");
        let waited = tokio::time::timeout(self.timeout, child.wait_with_output()).await;
        // Start the next worker only now: warming it up meanwhile would take CPU from this job.
        self.prepare_next();
        let out = match waited {
            Err(_) => return Err(CompileError::Timeout(self.timeout.as_millis() as u64)),
            Ok(Err(e)) => return Err(CompileError::Internal(e.to_string())),
            Ok(Ok(out)) => out,
        };
        match serde_json::from_slice::<WorkerReport>(&out.stdout) {
            Ok(WorkerReport::Compiled { abi, confinement }) if out.status.success() => {
                Ok((abi, confinement))
            }
            Ok(WorkerReport::Refused(e)) => Err(e),
            _ => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let start = stderr.len().saturating_sub(300);
                let start = (start..stderr.len())
                    .find(|i| stderr.is_char_boundary(*i))
                    .unwrap_or(stderr.len());
                Err(CompileError::Resources(format!(
                    "compile worker ended with {} {}",
                    out.status,
                    stderr[start..].trim()
                )))
            }
        }
    }
}
