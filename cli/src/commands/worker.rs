//! `wafer worker`: run jobs of one lane for a server, until idle.

use std::path::PathBuf;
use wafer_core::Lane;

/// Flags of `wafer worker`.
#[derive(clap::Args)]
pub struct Args {
    /// The server's URL.
    #[arg(long)]
    server: String,
    /// The runner credential: the runner key (runner.key in the server's data directory), or
    /// the lane's or claim's credential the server hands the runners it starts.
    #[arg(long, env = "WAFER_RUNNER_TOKEN", hide_env_values = true)]
    token: String,
    /// The lane to serve: fast, default or long.
    #[arg(long, default_value = "default", value_parser = parse_lane)]
    lane: Lane,
    /// Jobs run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Exit after this many milliseconds without work.
    #[arg(long, default_value_t = 30_000)]
    idle_ms: u64,
    /// Exit after this many jobs.
    #[arg(long)]
    max_jobs: Option<u64>,
    /// The artifact directory (the server's `<data-dir>/artifacts`).
    #[arg(long)]
    artifacts_dir: PathBuf,
    /// Scratch directory for compiling, when code must be compiled here.
    #[arg(long)]
    scratch_dir: PathBuf,
    /// The Redis URL, when the server's queue is Redis.
    #[arg(long, env = "WAFER_QUEUE_URL", hide_env_values = true)]
    queue_url: Option<String>,
    /// A job the server claimed for this runner (JSON; dedicated runners get it from the
    /// server): run it, then exit.
    #[arg(long, env = "WAFER_CLAIM", hide_env_values = true)]
    claim: Option<String>,
    /// Run the claimed job in a microVM of its own: the `vm` provisioner's options as JSON
    /// (the server sets this).
    #[arg(long, env = "WAFER_VM")]
    vm: Option<String>,
}

fn parse_lane(s: &str) -> Result<Lane, String> {
    Lane::parse(s).ok_or_else(|| format!("unknown lane {s:?}: fast, default or long"))
}

/// Runs the worker.
pub async fn run(a: &Args) -> anyhow::Result<()> {
    let claim = match &a.claim {
        Some(c) => Some(
            serde_json::from_str(c)
                .map_err(|e| anyhow::anyhow!("WAFER_CLAIM is not a claim: {e}"))?,
        ),
        None => None,
    };
    let vm = match &a.vm {
        Some(v) => Some(
            serde_json::from_str(v)
                .map_err(|e| anyhow::anyhow!("WAFER_VM is not VM options: {e}"))?,
        ),
        None => None,
    };
    wafer_worker::serve(wafer_worker::WorkerOptions {
        server: a.server.clone(),
        token: wafer_core::Secret::new(a.token.clone()),
        lane: a.lane,
        concurrency: a.concurrency,
        idle: std::time::Duration::from_millis(a.idle_ms),
        max_jobs: a.max_jobs,
        artifacts_dir: a.artifacts_dir.clone(),
        scratch_dir: a.scratch_dir.clone(),
        compile_program: std::env::current_exe().ok(),
        redis_url: a.queue_url.clone().map(wafer_core::Secret::new),
        claim,
        vm,
    })
    .await
}

/// Flags of `wafer runner-credential`.
#[derive(clap::Args)]
pub struct CredentialArgs {
    /// The lane whose workers get the credential: fast, default or long.
    #[arg(long, default_value = "default", value_parser = parse_lane)]
    lane: Lane,
}

/// Prints the lane credential derived from the runner key of `data_dir`.
pub fn credential(a: &CredentialArgs, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let path = data_dir.join(wafer_gateway::startup::RUNNER_KEY_FILE);
    let key = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "reading the runner key {}: {e} (it is created when the server first starts)",
            path.display()
        )
    })?;
    let keys = wafer_gateway::jobs::credentials::RunnerKeys::new(wafer_core::Secret::new(
        key.trim().to_owned(),
    ));
    println!("{}", keys.lane(a.lane).expose());
    Ok(())
}
