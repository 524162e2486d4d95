//! `wafer serve`: the gateway and an in-process runner pool on the embedded stores.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wafer_gateway::{Config, Gateway, WorkerCommand};

/// Flags of `wafer serve`; each overrides the config file.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "WAFER_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML configuration file (see deploy/config/wafer.toml).
    #[arg(long, env = "WAFER_CONFIG")]
    config: Option<PathBuf>,
    /// Compile in the server process instead of an isolated worker (not for untrusted uploads).
    #[arg(long, hide = true)]
    compile_in_process: bool,
}

/// The configuration in the file at `path` (the defaults without one), with what the
/// environment may hold instead because it may be secret (`WAFER_QUEUE_URL`,
/// `WAFER_CACHE_URL`, `WAFER_CACHE_SECRET`) and the long lane's provisioner when
/// `WAFER_LONG_PROVISIONER` names one.
pub fn read_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config: Config = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config file {}", p.display()))?
        }
        None => Config::default(),
    };
    if let Ok(url) = std::env::var("WAFER_QUEUE_URL") {
        config.queue.url = url;
    }
    if let Ok(url) = std::env::var("WAFER_CACHE_URL") {
        config.cache.shared.url = url;
    }
    if let Ok(secret) = std::env::var("WAFER_CACHE_SECRET") {
        config.cache.shared.secret = secret;
    }
    if let Ok(kind) = std::env::var("WAFER_LONG_PROVISIONER") {
        config.jobs.long.provisioner = serde_json::from_value(serde_json::Value::String(
            kind.clone(),
        ))
        .map_err(|_| {
            anyhow::anyhow!(
                "WAFER_LONG_PROVISIONER is {kind:?}: it must be local, vm, command or kubernetes"
            )
        })?;
    }
    Ok(config)
}

fn load_config(args: &Args, data_dir: &Path) -> anyhow::Result<Config> {
    let mut config = read_config(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    config.data_dir = data_dir.to_path_buf();
    Ok(config)
}

/// Logs to stderr, filtered by `WAFER_LOG`: for the server and runner roles.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WAFER_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(args: &Args, data_dir: &Path) -> anyhow::Result<()> {
    init_logging();
    let config = load_config(args, data_dir)?;
    let fd_limit = wafer_gateway::http::server::raise_fd_limit();
    let worker = if args.compile_in_process {
        None
    } else {
        Some(WorkerCommand {
            program: std::env::current_exe().context("locating the wafer binary")?,
            args: vec!["__compile".into()],
        })
    };
    let listen = config.listen;
    let gateway = Gateway::start(config, worker).await?;
    if let Some(key) = &gateway.new_admin_key {
        println!(
            "created admin API key (shown once; saved to {}):\n  {}",
            wafer_gateway::admin_key_path(data_dir).display(),
            key.expose()
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // The runners' API on a listener of its own, when configured: runners are given its
    // address, and the main listener does not serve it.
    let internal = match gateway.state.config.internal_listen {
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding internal_listen {at}"))?;
            Some(l)
        }
        None => None,
    };
    let runners_addr = match &internal {
        Some(l) => l.local_addr()?,
        None => addr,
    };
    // The main listener's line comes last: scripts wait for it.
    if internal.is_some() {
        println!("wafer runners' API listening on http://{runners_addr}");
    }
    println!("wafer listening on http://{addr}");
    tracing::info!(%addr, %runners_addr, data_dir = %data_dir.display(), "serving");
    gateway
        .start_jobs(
            std::env::current_exe().context("locating the wafer binary")?,
            runners_addr,
        )
        .await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        trigger.cancel();
    });
    let config = &gateway.state.config;
    let limits = wafer_gateway::http::server::ServerLimits {
        max_connections: wafer_gateway::http::server::connection_cap(
            config.max_connections,
            fd_limit,
        ),
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
    };
    tracing::info!(
        fd_limit,
        max_connections = limits.max_connections,
        "connection limits"
    );
    let metrics = gateway.state.metrics.clone();
    let main = wafer_gateway::http::server::serve(
        listener,
        gateway.router(),
        shutdown.clone(),
        limits.clone(),
        metrics.clone(),
    );
    match internal {
        None => main.await?,
        Some(l) => {
            let runners = wafer_gateway::http::server::serve(
                l,
                gateway.internal_router(),
                shutdown,
                limits,
                metrics,
            );
            tokio::try_join!(main, runners)?;
        }
    }
    Ok(())
}

/// Returns at Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_states_the_real_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/wafer.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        let as_json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&parsed), as_json(&Config::default()));
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<Config>("listne = \"127.0.0.1:1\"").is_err());
    }
}
