//! Start-up: the data directory (private, 0700), the embedded stores, the runner, the admin key
//! on first start, and the background work that runs for the life of the process (rebuilding
//! compiled code after an engine change, garbage collection).

use crate::api::auth;
use crate::config::Config;
use crate::config::{ProvisionerKind, QueueBackend};
use crate::dispatch::{long, provision, workers};
use crate::state::AppState;
use crate::{admission, gc, jobs, logs, metrics, resolve};
use axum::Router;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wafer_core::{
    EmbeddedJobQueue, EmbeddedJobStore, EmbeddedMetaStore, FsArtifactStore, Scope, TenantId,
};
use wafer_runner::{CompileMode, Runner, RunnerConfig};
use wafer_stores::RedisJobQueue;

/// The command that runs a compile worker: the `wafer` binary with its hidden `__compile`
/// command. Time and memory limits come from [`Config`].
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// File in the data directory that holds the admin key (mode 0600).
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// A started gateway: its state and, on first start, the new admin key.
pub struct Gateway {
    /// Shared state.
    pub state: Arc<AppState>,
    /// The admin key created on this start (first start only), to print once.
    pub new_admin_key: Option<wafer_core::Secret>,
}

impl Gateway {
    /// Opens the data directory and builds everything. Modules are compiled by `worker` (the
    /// `wafer` binary passes itself), or in this process when there is none (not for
    /// untrusted uploads).
    pub async fn start(config: Config, worker: Option<WorkerCommand>) -> anyhow::Result<Self> {
        let compile = match worker {
            None => CompileMode::InProcess,
            Some(w) => CompileMode::Worker {
                program: w.program,
                args: w.args,
                timeout: Duration::from_millis(config.compile_timeout_ms),
                memory_bytes: config.compile_memory_mb << 20,
            },
        };
        create_private_dir(&config.data_dir)?;
        let meta = Arc::new(EmbeddedMetaStore::open(config.data_dir.join("meta.redb"))?);
        let artifacts = Arc::new(FsArtifactStore::open(config.data_dir.join("artifacts"))?);
        let scratch = config.data_dir.join("scratch");
        // The compile worker's files from a crashed run are of no use; start empty.
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        let runner = Runner::new(
            RunnerConfig {
                engine: config.engine.clone(),
                hot_entries: config.hot_modules,
                compile,
                scratch_dir: scratch,
            },
            artifacts,
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let metrics = Arc::new(metrics::Metrics::default());
        let budget_mb = match config.memory_budget_mb {
            0 => admission::default_memory_budget_mb(config.engine.parked_bytes() >> 20),
            mb => mb,
        };
        let job_store = Arc::new(EmbeddedJobStore::open(config.data_dir.join("jobs.redb"))?);
        let shares = config.jobs.shares(config.max_inflight);
        let queue: Arc<dyn wafer_core::JobQueue> = match config.queue.backend {
            QueueBackend::Embedded => {
                let queue = EmbeddedJobQueue::open(
                    config.data_dir.join("queue.redb"),
                    config.jobs.max_deliveries,
                    shares,
                )?;
                // With local runners (children, which die with this process) none survived
                // its last run: their jobs can run again at once.
                if matches!(
                    config.jobs.long.provisioner,
                    ProvisionerKind::Local | ProvisionerKind::Vm
                ) {
                    queue.release_leases().await?;
                }
                Arc::new(queue)
            }
            QueueBackend::Redis => Arc::new(
                RedisJobQueue::connect(
                    &config.queue.url,
                    &config.queue.prefix,
                    config.jobs.max_deliveries,
                    shares,
                )
                .await
                .map_err(|e| anyhow::anyhow!("connecting to the Redis queue: {e}"))?,
            ),
        };
        let runner_token = runner_token(&config.data_dir)?;
        let jobs = jobs::Jobs::new(
            job_store,
            queue,
            config.jobs.clone(),
            config.data_dir.clone(),
            runner_token,
            metrics.clone(),
            config.functions.caps(),
            runner.engine_config().max_memory_mb,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let state = Arc::new(AppState {
            jobs,
            fleet: Default::default(),
            cache: crate::cache::ResponseCache::from_config(config.cache.clone(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("the shared response cache: {e}"))?,
            admission: admission::Admission::new(
                config.max_inflight,
                config.max_inflight_per_tenant,
                budget_mb,
                metrics.clone(),
            ),
            compiles: Arc::new(Semaphore::new(config.max_compiles.max(1))),
            metrics,
            logs: logs::LogBook::default(),
            resolver: resolve::Resolver::default(),
            runner: Arc::new(runner),
            meta,
            config,
        });
        let new_admin_key = bootstrap_admin_key(&state).await?;
        tokio::spawn(recompile_for_this_engine(state.clone()));
        tokio::spawn(gc::run_periodically(state.clone()));
        Ok(Self {
            state,
            new_admin_key,
        })
    }

    /// Queues again every job that has not ended and starts running jobs, with runner
    /// processes of `program` that reach this server at `listen`. Called once the server
    /// listens, so a job that takes the process down cannot stop it from starting.
    pub async fn start_jobs(
        &self,
        program: PathBuf,
        listen: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        let requeued = self.state.jobs.requeue_unfinished().await?;
        if requeued > 0 {
            tracing::info!(jobs = requeued, "unfinished jobs queued again");
        }
        crate::dispatch::inline::start(&self.state);
        let resumed = self.state.jobs.resume_webhooks().await?;
        if resumed > 0 {
            tracing::info!(deliveries = resumed, "webhook deliveries resumed");
        }
        let host = match listen.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        let launch = workers::Launch {
            program,
            server_url: format!("http://{}", std::net::SocketAddr::new(host, listen.port())),
        };
        let long = &self.state.jobs.config().long;
        if long.memory_mb > self.state.config.engine.max_memory_mb {
            anyhow::bail!(
                "jobs.long.memory_mb ({}) is above engine.max_memory_mb ({})",
                long.memory_mb,
                self.state.config.engine.max_memory_mb
            );
        }
        let provisioner: Arc<dyn provision::Provisioner> = match long.provisioner {
            ProvisionerKind::Local => Arc::new(provision::LocalProvisioner::default()),
            ProvisionerKind::Vm => Arc::new(crate::dispatch::vm::VmProvisioner::new(
                long.vm.for_server(&self.state.config.data_dir)?,
                self.state.metrics.clone(),
            )),
            ProvisionerKind::Command => {
                if long.command.launch.is_empty() {
                    anyhow::bail!(
                        "jobs.long.provisioner = \"command\" needs jobs.long.command.launch"
                    );
                }
                Arc::new(provision::CommandProvisioner::new(long.command.clone()))
            }
            ProvisionerKind::Kubernetes => Arc::new(provision::KubernetesProvisioner::new(
                long.kubernetes.clone(),
            )?),
        };
        tokio::spawn(workers::supervise_workers(
            self.state.clone(),
            launch.clone(),
        ));
        tokio::spawn(long::dispatch(self.state.clone(), launch, provisioner));
        Ok(())
    }

    /// The router with every route and layer.
    pub fn router(&self) -> Router {
        let with_internal = self.state.config.internal_listen.is_none();
        crate::router::router(self.state.clone(), with_internal)
    }

    /// The runners' internal API alone, for its own listener (`internal_listen`).
    pub fn internal_router(&self) -> Router {
        crate::router::internal_router(self.state.clone())
    }
}

/// Rebuilds, in the background and one at a time, the compiled code of every module a version
/// runs that has none for this engine (after an upgrade of wasmtime or of compile settings), so
/// the first invocations after an upgrade do not pay for it; an invocation that comes first
/// rebuilds its own module on demand.
async fn recompile_for_this_engine(state: Arc<AppState>) {
    let digests: std::collections::BTreeSet<_> = match state.meta.module_uses().await {
        Ok(uses) => uses.into_iter().map(|(_, d)| d).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list modules to recompile");
            return;
        }
    };
    let mut rebuilt = 0;
    for digest in digests {
        let Ok(_slot) = state.compiles.acquire().await else {
            return;
        };
        match state.runner.ensure_compiled(&digest).await {
            Ok(true) => rebuilt += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(%digest, error = %e, "recompiling failed"),
        }
    }
    if rebuilt > 0 {
        tracing::info!(rebuilt, "compiled code rebuilt for this engine");
    }
}

/// Creates the admin key on first start and writes it to `<data-dir>/admin.key` (0600).
async fn bootstrap_admin_key(state: &AppState) -> anyhow::Result<Option<wafer_core::Secret>> {
    let path = admin_key_path(&state.config.data_dir);
    if path.exists() {
        return Ok(None);
    }
    let admin = TenantId::new("admin").expect("valid tenant");
    let (key, _) = auth::create_key(state, admin, vec![Scope::Admin])
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    write_private(&path, key.expose())?;
    Ok(Some(key))
}

/// File in the data directory that holds the runner token (mode 0600).
pub const RUNNER_KEY_FILE: &str = "runner.key";

/// The token runner processes present to the internal API: created on first start, kept in
/// `runner.key`, so runners started before a restart can still hand back their results.
fn runner_token(data_dir: &Path) -> anyhow::Result<wafer_core::Secret> {
    let path = data_dir.join(RUNNER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => Ok(wafer_core::Secret::new(s.trim().to_owned())),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let token = format!("wrn_{}", hex::encode(bytes));
            write_private(&path, &token)?;
            Ok(wafer_core::Secret::new(token))
        }
    }
}

/// Creates the data directory (and its parents) if needed and makes it private to this user
/// (0700): it holds the admin key, the metadata and every tenant's modules.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Where the admin key of a data directory lives.
pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_KEY_FILE)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
