//! `wafer worker`: a runner in its own process. It pulls jobs of one lane, runs each in a
//! fresh sandbox of its own engine (built with the server's engine settings, so the server's
//! compiled code loads as is), heartbeats while a job runs, hands the end back and only then
//! acks the delivery. It exits after an idle time, so with no work no worker exists.
//!
//! Deliveries come from a [`Deliveries`] source: the embedded queue through the server's
//! internal API ([`RemoteQueue`]), or Redis directly ([`DirectQueue`]). Job records are the
//! server's: a worker starts and finishes jobs through the same internal API and never opens
//! the server's files except the content-addressed artifact directory.
//!
//! A worker holds its lane's credential; starting a job it claimed gets it that claim's
//! credential, with which it does everything else for that job (heartbeats, module, end,
//! ack). A dedicated runner holds only its claim's credential, and reaches the queue through
//! the server whatever the backend ([`crate::credentials`]).

use crate::api::internal::{
    ClaimRequest, DeadRequest, FinishRequest, HeartbeatRequest, RunnerSetup, StartRequest, Started,
};
use crate::auth::Secret;
use crate::execute::{self, Call};
use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use wafer_core::{
    ArtifactKey, ArtifactStore, Claim, Claimed, FsArtifactStore, Lane, Route, WorkOrder,
};
use wafer_runner::{CompileMode, Invocation, Limits, Runner, RunnerConfig};

/// How a worker is started.
#[derive(Debug)]
pub struct WorkerOptions {
    /// The server's base URL.
    pub server: String,
    /// The runner credential: a lane's, a claim's (a dedicated runner) or the runner key.
    pub token: Secret,
    /// The lane to serve.
    pub lane: Lane,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Exit after this long without work.
    pub idle: Duration,
    /// Exit after this many jobs (a dedicated runner takes one).
    pub max_jobs: Option<u64>,
    /// The artifact directory (the server's, on the same machine).
    pub artifacts_dir: PathBuf,
    /// Where the compile worker's files go, when code must be compiled here.
    pub scratch_dir: PathBuf,
    /// The `wafer` binary, to compile in an isolated child (None: in process).
    pub compile_program: Option<PathBuf>,
    /// The Redis URL, when the server's queue is Redis (from the environment).
    pub redis_url: Option<Secret>,
    /// A job claimed for this runner by the server (a dedicated runner): run it and exit.
    pub claim: Option<Claim>,
    /// Run the claimed job in a microVM of its own (the `vm` provisioner).
    pub vm: Option<crate::vm::VmOptions>,
}

/// The server's internal API, as a runner calls it.
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl ServerClient {
    /// A client of the server at `base`.
    pub fn new(base: &str, token: Secret) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .context("building the HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn send<R: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<R> {
        let resp = rb
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| format!("reaching the server at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!(
                "the server answered {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        resp.json().await.context("the server's answer is not JSON")
    }

    /// A client of the same server that presents `token` (a claim's credential).
    pub fn scoped(&self, token: Secret) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
        }
    }

    /// GETs `path` of the internal API.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// GETs the bytes at `path` of the internal API; None on 404.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Option<Bytes>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| format!("reaching the server at {}", self.base))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.bytes().await?)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => anyhow::bail!("the server answered {s} for {path}"),
        }
    }

    /// POSTs `body` to `path` of the internal API.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}

/// Where a runner gets deliveries: claim, heartbeat, ack. The server's queue through its
/// internal API ([`RemoteQueue`]), where `server` presents the credential each call needs; a
/// queue a runner reaches directly (Redis Streams) fits the same.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync + 'static {
    /// The next job of `lane`, waiting up to `wait` for one, with the claim's credential when
    /// the server made the claim (else the start asks the server for it).
    async fn claim(
        &self,
        server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>>;
    /// Extends the lease; false when it was lost (cancelled or delivered again).
    async fn heartbeat(
        &self,
        server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool>;
    /// Removes the delivery after the end is stored.
    async fn ack(&self, server: &ServerClient, claim: &Claim) -> anyhow::Result<bool>;
}

/// The server's queue (whatever its backend), through its internal API.
pub struct RemoteQueue;

#[async_trait::async_trait]
impl Deliveries for RemoteQueue {
    async fn claim(
        &self,
        server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>> {
        #[derive(serde::Deserialize)]
        struct Answer {
            claimed: Option<Claimed>,
            #[serde(default)]
            credential: Option<String>,
        }
        let a: Answer = server
            .post(
                "/internal/v1/queue/claim",
                &ClaimRequest {
                    lane,
                    lease_ms: lease.as_millis() as u64,
                    wait_ms: wait.as_millis() as u64,
                },
            )
            .await?;
        Ok(a.claimed.map(|c| (c, a.credential.map(Secret::new))))
    }

    async fn heartbeat(
        &self,
        server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool> {
        let v: serde_json::Value = server
            .post(
                "/internal/v1/queue/heartbeat",
                &HeartbeatRequest {
                    claim: claim.clone(),
                    lease_ms: lease.as_millis() as u64,
                },
            )
            .await?;
        Ok(v["held"].as_bool().unwrap_or(false))
    }

    async fn ack(&self, server: &ServerClient, claim: &Claim) -> anyhow::Result<bool> {
        let v: serde_json::Value = server.post("/internal/v1/queue/ack", claim).await?;
        Ok(v["acked"].as_bool().unwrap_or(false))
    }
}

/// A queue a runner reaches directly (Redis Streams).
pub struct DirectQueue(pub Arc<dyn wafer_core::JobQueue>);

#[async_trait::async_trait]
impl Deliveries for DirectQueue {
    async fn claim(
        &self,
        _server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>> {
        Ok(self
            .0
            .claim_wait(lane, lease, wait)
            .await?
            .map(|c| (c, None)))
    }

    async fn heartbeat(
        &self,
        _server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool> {
        Ok(self.0.heartbeat(claim, lease).await?)
    }

    async fn ack(&self, _server: &ServerClient, claim: &Claim) -> anyhow::Result<bool> {
        Ok(self.0.ack(claim).await?)
    }
}

fn now_ms() -> u64 {
    wafer_core::jobs::now_ms()
}

/// Runs a worker until it has been idle for its idle time (or ran its most jobs).
pub async fn run(opts: WorkerOptions) -> anyhow::Result<()> {
    let server = Arc::new(ServerClient::new(&opts.server, opts.token)?);
    let setup: RunnerSetup = server
        .get("/internal/v1/setup")
        .await
        .context("fetching the runner setup")?;
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(
        FsArtifactStore::open(&opts.artifacts_dir)
            .with_context(|| format!("opening {}", opts.artifacts_dir.display()))?,
    );
    let compile = match &opts.compile_program {
        Some(p) => CompileMode::Worker {
            program: p.clone(),
            args: vec!["__compile".into()],
            timeout: Duration::from_millis(setup.compile_timeout_ms),
            memory_bytes: setup.compile_memory_mb << 20,
        },
        None => CompileMode::InProcess,
    };
    let runner = Arc::new(
        Runner::new(
            RunnerConfig {
                engine: setup.engine,
                hot_entries: setup.hot_modules,
                compile,
                scratch_dir: opts.scratch_dir.clone(),
            },
            artifacts.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    );
    if runner.fingerprint() != setup.fingerprint {
        tracing::warn!("this worker's engine differs from the server's: modules are recompiled");
    }
    let queue: Arc<dyn Deliveries> = match (&setup.redis_prefix, &opts.redis_url) {
        // A dedicated runner reaches the queue through the server: its credential is its
        // claim's, and it gets no queue URL.
        _ if opts.claim.is_some() => Arc::new(RemoteQueue),
        (None, _) => Arc::new(RemoteQueue),
        (Some(prefix), Some(url)) => Arc::new(DirectQueue(Arc::new(
            wafer_core::RedisJobQueue::connect(
                url.expose(),
                prefix,
                setup.max_deliveries,
                setup.shares,
            )
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the Redis queue: {e}"))?,
        ))),
        (Some(_), None) => {
            anyhow::bail!("the server's queue is Redis: give its URL in WAFER_QUEUE_URL")
        }
    };
    let timing = Timing {
        lease: Duration::from_millis(setup.lease_ms.max(100)),
        heartbeat: Duration::from_millis(setup.heartbeat_ms.max(10)),
    };
    if let Some(claim) = &opts.claim {
        // A dedicated runner: the server claimed the job for it.
        tracing::info!(job = claim.job.id.as_str(), "dedicated runner started");
        run_one(
            &server,
            queue.as_ref(),
            &runner,
            claim,
            timing,
            Route::Dedicated,
            opts.vm.as_ref(),
        )
        .await?;
        return Ok(());
    }
    let concurrency = opts.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let last_activity = Arc::new(AtomicU64::new(now_ms()));
    let mut taken = 0u64;
    tracing::info!(lane = opts.lane.as_str(), concurrency, "worker started");
    loop {
        if opts.max_jobs.is_some_and(|m| taken >= m) {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let running = concurrency - 1 - permits.available_permits();
        let idle_for =
            Duration::from_millis(now_ms().saturating_sub(last_activity.load(Ordering::Relaxed)));
        if running == 0 && idle_for >= opts.idle {
            break;
        }
        let wait = opts
            .idle
            .saturating_sub(idle_for)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let claimed = match queue.claim(&server, opts.lane, timing.lease, wait).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "claiming failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match claimed {
            None => {}
            Some((Claimed::Dead { job, deliveries }, _)) => {
                let _: serde_json::Value = server
                    .post(
                        &format!("/internal/v1/jobs/{}/dead", job.id.as_str()),
                        &DeadRequest { deliveries },
                    )
                    .await
                    .unwrap_or_default();
            }
            Some((Claimed::Job(claim), credential)) => {
                taken += 1;
                last_activity.store(now_ms(), Ordering::Relaxed);
                // With the claim's credential from the server, the job is started with it.
                let server = match credential {
                    Some(c) => Arc::new(server.scoped(c)),
                    None => server.clone(),
                };
                let (queue, runner, activity) =
                    (queue.clone(), runner.clone(), last_activity.clone());
                tokio::spawn(async move {
                    let ran = run_one(
                        &server,
                        queue.as_ref(),
                        &runner,
                        &claim,
                        timing,
                        Route::Worker,
                        None,
                    )
                    .await;
                    if let Err(e) = ran {
                        tracing::warn!(
                            job = claim.job.id.as_str(),
                            error = %format!("{e:#}"),
                            "job not finished here; its lease will run out"
                        );
                    }
                    activity.store(now_ms(), Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
    }
    // Let running jobs end.
    let _all = permits.acquire_many(concurrency as u32).await?;
    tracing::info!(jobs = taken, "worker idle: exiting");
    Ok(())
}

/// Makes sure the runner's artifact store has `digest`'s compiled code (fetched from the
/// server for an engine like its own) or at least the module (to compile here), for runners
/// that do not share the server's artifact directory.
async fn fetch_code(
    server: &ServerClient,
    runner: &Runner,
    digest: &wafer_core::Digest,
) -> anyhow::Result<()> {
    let store = runner.artifacts();
    let compiled = ArtifactKey::compiled(runner.fingerprint(), digest)?;
    if store.exists(&compiled).await? {
        return Ok(());
    }
    let path = format!(
        "/internal/v1/artifacts/{}/{}",
        runner.fingerprint(),
        digest.as_str()
    );
    if let Some(code) = server.get_bytes(&path).await? {
        store.put(&compiled, code).await?;
        return Ok(());
    }
    let module = ArtifactKey::Module(digest.clone());
    if !store.exists(&module).await? {
        let bytes = server
            .get_bytes(&format!("/internal/v1/modules/{}", digest.as_str()))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server has no module {digest}"))?;
        store.put(&module, bytes).await?;
    }
    Ok(())
}

/// Runs a work order on `input` with `runner`, whose artifact store holds the order's module
/// (or its compiled code). Shared by `wafer worker` and the VM's guest agent.
pub async fn execute_order(
    runner: &Runner,
    order: &WorkOrder,
    input: Vec<u8>,
) -> Result<wafer_runner::Outcome, wafer_runner::InvokeError> {
    let call = Call::replay(&order.request, Bytes::from(input));
    let mut env = order.env.clone();
    let limits = Limits {
        timeout: Duration::from_millis(order.timeout_ms),
        fuel: order.fuel,
        memory_bytes: (order.memory_mb as usize) << 20,
        table_elements: wafer_runner::limits::MAX_TABLE_ELEMENTS,
        stdout_bytes: order.stdout_bytes,
        stderr_bytes: order.stderr_bytes,
        response_bytes: order.response_bytes,
    };
    let input = execute::input_of(order.abi, order.request_env, &mut env, call)?;
    let (prepared, _) = runner.prepare(&order.module).await?;
    runner
        .invoke(
            prepared,
            Invocation {
                limits,
                args: vec![order.function.to_string()],
                env,
                input,
            },
        )
        .await
}

#[derive(Clone, Copy)]
struct Timing {
    lease: Duration,
    heartbeat: Duration,
}

/// Starts, runs and finishes one delivered job.
async fn run_one(
    server: &ServerClient,
    queue: &dyn Deliveries,
    runner: &Runner,
    claim: &Claim,
    timing: Timing,
    route: Route,
    vm: Option<&crate::vm::VmOptions>,
) -> anyhow::Result<()> {
    let id = claim.job.id.as_str();
    let started: Started = server
        .post(
            &format!("/internal/v1/jobs/{id}/start"),
            &StartRequest {
                route,
                attempt: claim.delivery,
                claim: Some(claim.clone()),
            },
        )
        .await?;
    // Everything else for this job goes with the claim's own credential.
    let scoped;
    let server = match started.credential {
        Some(c) => {
            scoped = server.scoped(Secret::new(c));
            &scoped
        }
        None => server,
    };
    let Some(order) = started.order else {
        // It ended or was cancelled while it waited.
        queue.ack(server, claim).await?;
        return Ok(());
    };
    // Crash tests stop the worker here, as a runner dying mid-job would.
    wafer_core::crash_point("worker-running");
    let input = base64::engine::general_purpose::STANDARD
        .decode(started.input_base64.as_bytes())
        .context("the job's input is not base64")?;
    let span = tracing::info_span!("job", job = id, function = %order.function);
    let execution = async {
        let Some(vm) = vm else {
            fetch_code(server, runner, &order.module).await?;
            let result = execute_order(runner, &order, input).await;
            return anyhow::Ok(crate::jobs::end_of(result));
        };
        // In a VM: the guest compiles the module itself, from the module's bytes.
        let module = server
            .get_bytes(&format!("/internal/v1/modules/{}", order.module.as_str()))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server has no module {}", order.module))?;
        // Under KVM the guest's CPU is the host's (`-cpu host`): the host's compiled code
        // may fit it (the guest checks). An emulated CPU is another one: not worth sending.
        let compiled = match vm.accel {
            crate::vm::Accel::Kvm => {
                let path = format!(
                    "/internal/v1/artifacts/{}/{}",
                    runner.fingerprint(),
                    order.module.as_str()
                );
                server.get_bytes(&path).await.ok().flatten()
            }
            _ => None,
        };
        let compiled = compiled.map(|code| (runner.fingerprint(), code));
        let engine = runner.engine_config();
        Ok(
            match crate::vm::run(vm, &order, module, compiled, &input, engine).await {
                Ok(run) => (run.end, run.output),
                Err(crate::vm::VmError::Boot(e)) if vm.fallback == crate::vm::Fallback::Local => {
                    // Configured to fall back: the job runs here, and its record says why.
                    let reason = format!("{e:#}");
                    tracing::warn!(job = id, %reason, "the VM did not boot: running the job outside a VM");
                    fetch_code(server, runner, &order.module).await?;
                    let (mut end, output) =
                        crate::jobs::end_of(execute_order(runner, &order, input).await);
                    end.runner = Some(serde_json::json!({
                        "kind": "local",
                        "fallback_from": "vm",
                        "reason": reason,
                    }));
                    (end, output)
                }
                Err(e) => (crate::vm::failed(&e), Bytes::new()),
            },
        )
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(timing.heartbeat).await;
            match queue.heartbeat(server, claim, timing.lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(job = id, error = %format!("{e:#}"), "heartbeat failed"),
            }
        }
    };
    let began = Instant::now();
    let result = tokio::select! {
        r = execution.instrument(span) => r,
        () = heartbeat => {
            tracing::info!(job = id, "the job was cancelled or delivered again: stopped");
            return Ok(());
        }
    };
    let (end, output) = result?;
    tracing::debug!(
        job = id,
        status = end.status.as_str(),
        ms = began.elapsed().as_millis() as u64,
        "job ran"
    );
    let finished: serde_json::Value = server
        .post(
            &format!("/internal/v1/jobs/{id}/finish"),
            &FinishRequest {
                end,
                output_base64: base64::engine::general_purpose::STANDARD.encode(&output),
            },
        )
        .await?;
    if finished["stored"] == false {
        tracing::info!(
            job = id,
            "the job had already ended: this run's end was not kept"
        );
    }
    if !queue.ack(server, claim).await? {
        tracing::info!(
            job = id,
            delivery = claim.delivery,
            "the delivery is no longer this worker's: not acked"
        );
    }
    Ok(())
}
