//! The Wafer gateway: the HTTP API in front of the runner.
//!
//! [`Gateway::start`] opens the embedded stores in the data directory, creates the admin key
//! on first start, builds the runner and returns a router; [`serve`] runs it until the
//! shutdown token fires, draining in-flight requests.

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod gc;
pub mod logs;
pub mod metrics;
pub mod problem;
pub mod resolve;
pub mod server;
pub mod state;

pub use config::Config;

use crate::problem::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, put};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use wafer_core::{EmbeddedMetaStore, FsArtifactStore, Scope, TenantId};
use wafer_runner::{CompileMode, Runner, RunnerConfig};

/// File in the data directory that holds the admin key (mode 0600).
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// A started gateway: its state and, on first start, the new admin key.
pub struct Gateway {
    /// Shared state.
    pub state: Arc<AppState>,
    /// The admin key created on this start (first start only), to print once.
    pub new_admin_key: Option<auth::Secret>,
}

impl Gateway {
    /// Opens the data directory and builds everything. `compile` says where modules are
    /// compiled (the `wafer` binary passes its own compile worker).
    pub async fn start(config: Config, compile: CompileMode) -> anyhow::Result<Self> {
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
        let state = Arc::new(AppState {
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

    /// The router with every route and layer.
    pub fn router(&self) -> Router {
        router(self.state.clone())
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
async fn bootstrap_admin_key(state: &AppState) -> anyhow::Result<Option<auth::Secret>> {
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

/// Every route, with request ids, tracing and problem decoration as layers.
pub fn router(state: Arc<AppState>) -> Router {
    use api::{functions, health, invoke, keys, modules};
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .route("/v1/modules", put(modules::upload))
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            put(functions::put)
                .get(functions::get)
                .delete(functions::delete),
        )
        .route("/v1/functions/{name}/versions", get(functions::versions))
        .route("/v1/functions/{name}/logs", get(functions::logs))
        .route(
            "/v1/functions/{name}/aliases/{alias}",
            put(functions::set_alias),
        )
        .route(
            "/v1/keys",
            axum::routing::post(keys::create).get(keys::list),
        )
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/admin/gc", axum::routing::post(health::collect_garbage))
        .route("/fn/{target}", any(invoke::invoke))
        .route("/fn/{target}/", any(invoke::invoke))
        .route("/fn/{target}/{*path}", any(invoke::invoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(problem_decoration))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Function failures are 5xx answers, not server faults: keep them out of ERROR logs.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such route; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// Gives problems the request id as `instance`, and on a 4xx answer to a request that carried
/// a body (which may not have been read) asks for the connection to be closed, so a client
/// does not reuse a connection with unread bytes in flight.
async fn problem_decoration(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let had_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = match id {
        Some(id) => problem::with_request_id(id, next.run(req)).await,
        None => next.run(req).await,
    };
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if is_problem && had_body && resp.status().is_client_error() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
