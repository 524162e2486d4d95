//! The command ABI: request body on stdin, response from stdout, stderr as the log, and a
//! non-zero exit status as failure. Preview 1 modules and preview 2 components alike.

use super::{HostState, P1State, apply_limits, classify, exit_status, fuel_used};
use crate::error::InvokeError;
use crate::limits::Limits;
use crate::output::{CappedOutput, Overflow};
use bytes::Bytes;
use std::time::Instant;
use wasmtime::{Engine, InstancePre, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

/// What a finished command left behind.
pub struct CommandRun {
    /// stdout, within its cap.
    pub stdout: Bytes,
    /// The tail of stderr.
    pub stderr: Bytes,
    /// Fuel consumed.
    pub fuel: u64,
}

fn builder(
    args: &[String],
    env: &[(String, String)],
    stdin: Bytes,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
) -> WasiCtxBuilder {
    let mut b = WasiCtxBuilder::new();
    b.stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(args)
        .envs(env);
    b
}

fn finish(
    result: Result<i32, wasmtime::Error>,
    hit: Option<crate::limits::LimitHit>,
    limits: &Limits,
    stdout: CappedOutput,
    stderr: CappedOutput,
    fuel: u64,
) -> Result<CommandRun, InvokeError> {
    let code = match result {
        Ok(code) => code,
        Err(e) => match exit_status(&e) {
            Some(code) => code,
            None => {
                if stdout.overflowed() {
                    return Err(InvokeError::OutputLimit {
                        stream: "stdout",
                        limit: stdout.cap(),
                    }
                    .with_log(&stderr.contents()));
                }
                return Err(classify(e, hit, limits).with_log(&stderr.contents()));
            }
        },
    };
    if stdout.overflowed() {
        // The guest saw a failed write and exited on its own: still an output-limit failure.
        return Err(InvokeError::OutputLimit {
            stream: "stdout",
            limit: stdout.cap(),
        }
        .with_log(&stderr.contents()));
    }
    if code != 0 {
        return Err(InvokeError::Exit {
            code,
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
        });
    }
    Ok(CommandRun {
        stdout: stdout.contents(),
        stderr: stderr.contents(),
        fuel,
    })
}

/// Runs a preview 1 command module.
pub async fn run_module(
    engine: &Engine,
    pre: &InstancePre<P1State>,
    limits: &Limits,
    args: &[String],
    env: &[(String, String)],
    stdin: Bytes,
) -> Result<CommandRun, InvokeError> {
    let deadline = Instant::now() + limits.timeout;
    let stdout = CappedOutput::new(limits.stdout_bytes, Overflow::Fail);
    let stderr = CappedOutput::new(limits.stderr_bytes, Overflow::KeepTail);
    let wasi = builder(args, env, stdin, &stdout, &stderr).build_p1();
    let mut store = Store::new(engine, P1State::new(wasi, limits));
    apply_limits(&mut store, limits, deadline);
    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await.map(|()| 0)
    };
    let result = match tokio::time::timeout(limits.timeout, run).await {
        Ok(r) => r,
        Err(_) => return Err(InvokeError::Timeout(limits.timeout).with_log(&stderr.contents())),
    };
    let hit = store.data_mut().limiter_hit();
    let fuel = fuel_used(&store, limits);
    finish(result, hit, limits, stdout, stderr, fuel)
}

/// Runs a preview 2 command component.
pub async fn run_component(
    engine: &Engine,
    pre: &CommandPre<HostState>,
    limits: &Limits,
    args: &[String],
    env: &[(String, String)],
    stdin: Bytes,
) -> Result<CommandRun, InvokeError> {
    let deadline = Instant::now() + limits.timeout;
    let stdout = CappedOutput::new(limits.stdout_bytes, Overflow::Fail);
    let stderr = CappedOutput::new(limits.stderr_bytes, Overflow::KeepTail);
    let wasi = builder(args, env, stdin, &stdout, &stderr).build();
    let mut store = Store::new(engine, HostState::new(wasi, limits));
    apply_limits(&mut store, limits, deadline);
    let run = async {
        let command = pre.instantiate_async(&mut store).await?;
        match command.wasi_cli_run().call_run(&mut store).await? {
            Ok(()) => Ok(0),
            Err(()) => Ok(1),
        }
    };
    let result = match tokio::time::timeout(limits.timeout, run).await {
        Ok(r) => r,
        Err(_) => return Err(InvokeError::Timeout(limits.timeout).with_log(&stderr.contents())),
    };
    let hit = store.data_mut().limiter_hit();
    let fuel = fuel_used(&store, limits);
    finish(result, hit, limits, stdout, stderr, fuel)
}
