//! `wafer cache`: the response cache as a sidecar in front of a gateway
//! (`--listen ADDR --upstream URL`), and `wafer cache purge NAME`.

use crate::client::Client;
use anyhow::Context;
use reqwest::Method;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wafer_gateway::cache::sidecar::{self, SidecarConfig};

/// Flags of `wafer cache`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Without a subcommand: run the cache as a proxy in front of `--upstream`.
    #[command(subcommand)]
    pub command: Option<CacheCommand>,
    /// Address the sidecar listens on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "WAFER_CACHE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The gateway to cache for, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "WAFER_CACHE_UPSTREAM")]
    upstream: Option<String>,
    /// TOML configuration: its `[cache]` section (levels, bounds, shared Redis) and request
    /// limits; `WAFER_CACHE_URL` gives the shared Redis instead.
    #[arg(long, env = "WAFER_CONFIG")]
    config: Option<PathBuf>,
    /// How long what the gateway says of a function (version, alias, purge, the caller's
    /// rights) is trusted: the most a change takes to reach the sidecar's answers.
    #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration_ms)]
    scope_ttl: u64,
}

/// `wafer cache …` subcommands.
#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Forget every kept answer of a function (its owner, scope deploy).
    Purge {
        /// Function name.
        name: String,
    },
}

/// Runs a `wafer cache` subcommand.
pub async fn purge(client: &Client, c: &CacheCommand) -> anyhow::Result<()> {
    match c {
        CacheCommand::Purge { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/functions/{name}/cache")))
                .await?;
            eprintln!("purged the cached answers of {name}");
            Ok(())
        }
    }
}

/// Runs the sidecar until Ctrl-C or SIGTERM.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let Some(upstream) = args.upstream.clone() else {
        return Err(crate::client::CliError::Usage(
            "`wafer cache` needs --upstream URL (the gateway), or a subcommand such as `purge`"
                .into(),
        )
        .into());
    };
    reqwest::Url::parse(&upstream).with_context(|| format!("--upstream {upstream}"))?;
    let config = super::serve::read_config(args.config.as_deref())?;
    let metrics = std::sync::Arc::new(wafer_gateway::metrics::Metrics::default());
    let router = sidecar::router(
        SidecarConfig {
            upstream: upstream.clone(),
            scope_ttl: Duration::from_millis(args.scope_ttl.max(1)),
            max_request_bytes: config.max_request_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            cache: config.cache.clone(),
        },
        metrics.clone(),
    )
    .map_err(|e| anyhow::anyhow!("the shared response cache: {e}"))?;
    let fd_limit = wafer_gateway::http::server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("wafer cache listening on http://{addr}, in front of {upstream}");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        super::serve::wait_for_signal().await;
        trigger.cancel();
    });
    let limits = wafer_gateway::http::server::ServerLimits {
        max_connections: wafer_gateway::http::server::connection_cap(
            config.max_connections,
            fd_limit,
        ),
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
    };
    wafer_gateway::http::server::serve(listener, router, shutdown, limits, metrics).await?;
    Ok(())
}
