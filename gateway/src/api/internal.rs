//! `/internal/v1/…`: the API runners in other processes use (workers, dedicated runners).
//!
//! The embedded metadata store, job store and queue are files only this server opens, so a
//! runner reaches them through here: it claims, heartbeats and acks queue entries, fetches the
//! work order of a job it starts (the version resolved, limits and input) and hands back the
//! end. Every route wants a runner credential ([`crate::jobs::credentials`]) and does only what it
//! grants: a worker's lane credential claims from its lane and, for a claim the queue
//! confirms, gets that claim's credential; a claim credential reaches its own job and that
//! job's module while the job has not ended. Without a credential every route is 404,
//! answered before any of the request's body is read; with one that does not cover the
//! route, 403. Bodies are read within the body timeout, up to the room a whole result needs
//! ([`body_limit`]).

use crate::http::problem::ApiError;
use crate::jobs::credentials::Grant;
use crate::state::AppState;
use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use std::sync::Arc;
use std::time::Duration;
use wafer_core::{Claimed, JobId, JobRecord};
use wafer_worker::wire::{
    AckRequest, Acked, Buried, COMPILED_ROUTE, ClaimAnswer, ClaimRequest, DeadRequest, Endpoint,
    FinishRequest, HeartbeatRequest, Held, MODULE_ROUTE, RunnerSetup, SETUP_ROUTE, StartRequest,
    Started, Stored,
};

/// What the `Bearer` credential a runner presents grants.
fn check(state: &AppState, headers: &HeaderMap) -> Result<Grant, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    state.jobs.runner_keys().check(presented).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such route; see /openapi.json",
        )
    })
}

/// A credential that does not cover what was asked.
fn beyond(what: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "beyond-credential",
        "Beyond this runner's credential",
        what,
    )
}

/// The runners' API. The credential is checked first, by a layer, so a caller without one
/// gets its 404 at once, whatever body it announces; handlers see what it grants.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(SETUP_ROUTE, get(setup))
        .route(ClaimRequest::ROUTE, post(claim))
        .route(HeartbeatRequest::ROUTE, post(heartbeat))
        .route(AckRequest::ROUTE, post(ack))
        .route(StartRequest::ROUTE, post(start))
        .route(FinishRequest::ROUTE, post(finish))
        .route(DeadRequest::ROUTE, post(dead))
        .route(COMPILED_ROUTE, get(compiled))
        .route(MODULE_ROUTE, get(module))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&state, req.headers()) {
        Ok(grant) => {
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Whether `grant` covers delivery `delivery` of `job`.
fn holds(grant: &Grant, job: &JobId, delivery: u32) -> bool {
    match grant {
        Grant::All => true,
        Grant::Claim {
            job: j,
            delivery: d,
        } => j == job && *d == delivery,
        Grant::Lane(_) => false,
    }
}

/// A job's record, or 404.
async fn record(state: &AppState, id: &JobId) -> Result<JobRecord, ApiError> {
    state
        .jobs
        .store
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(super::jobs::job_not_found)
}

/// The largest body a runner sends: a finish with a whole response and a whole log.
pub fn body_limit(config: &crate::config::Config) -> usize {
    let f = &config.functions;
    // A command's output is its stdout, an HTTP function's its response body.
    wafer_worker::end::end_message_bytes(
        f.max_response_bytes.max(f.max_stdout_bytes),
        f.max_log_bytes,
    )
}

/// A JSON body of the runners' API, read within the body timeout and up to [`body_limit`].
pub struct RunnerJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<AppState>> for RunnerJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let limit = body_limit(&state.config);
        let bytes =
            super::read_limited(state, &parts.headers, body, limit, "request-too-large").await?;
        serde_json::from_slice(&bytes)
            .map(RunnerJson)
            .map_err(|e| ApiError::bad_request("invalid-json", format!("invalid JSON body: {e}")))
    }
}

/// `GET /internal/v1/setup`.
pub async fn setup(State(state): State<Arc<AppState>>) -> Result<Json<RunnerSetup>, ApiError> {
    Ok(Json(RunnerSetup {
        engine: state.runner.engine_config().clone(),
        fingerprint: state.runner.fingerprint().to_owned(),
        lease_ms: state.jobs.config().lease_ms,
        heartbeat_ms: state.jobs.heartbeat().as_millis() as u64,
        max_deliveries: state.jobs.config().max_deliveries,
        compile_timeout_ms: state.config.compile_timeout_ms,
        compile_memory_mb: state.config.compile_memory_mb,
        hot_modules: state.config.hot_modules,
        redis_prefix: (state.config.queue.backend == crate::config::QueueBackend::Redis)
            .then(|| state.config.queue.prefix.clone()),
        shares: state.jobs.config().shares(state.config.max_inflight),
    }))
}

/// `POST /internal/v1/queue/claim`: the next job of a lane, waiting up to `wait_ms` for one,
/// with the claim's credential.
pub async fn claim(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    RunnerJson(req): RunnerJson<ClaimRequest>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    if !matches!(grant, Grant::All) && grant != Grant::Lane(req.lane) {
        return Err(beyond(format!(
            "this credential does not claim from the {} lane",
            req.lane.as_str()
        )));
    }
    let wait = Duration::from_millis(req.wait_ms.min(30_000));
    let lease = Duration::from_millis(req.lease_ms.clamp(100, 3_600_000));
    let claimed = state.jobs.claim_waiting(req.lane, lease, wait).await?;
    // The server made this claim itself: its credential comes with it.
    let credential = match &claimed {
        Some(Claimed::Job(c)) => Some(
            state
                .jobs
                .runner_keys()
                .claim(&c.job.id, c.delivery)
                .expose()
                .to_owned(),
        ),
        _ => None,
    };
    Ok(Json(ClaimAnswer {
        claimed,
        credential,
    }))
}

/// `POST /internal/v1/queue/heartbeat`: `{"held": false}` when the claim was lost (the job was
/// cancelled or delivered again), so the runner stops it.
pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    RunnerJson(req): RunnerJson<HeartbeatRequest>,
) -> Result<Json<Held>, ApiError> {
    if !holds(&grant, &req.claim.job.id, req.claim.delivery) {
        return Err(beyond("this credential does not hold that claim"));
    }
    let lease = Duration::from_millis(req.lease_ms.clamp(100, 3_600_000));
    let held = state
        .jobs
        .queue
        .heartbeat(&req.claim, lease)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(Held { held }))
}

/// `POST /internal/v1/queue/ack`.
pub async fn ack(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    RunnerJson(AckRequest(claim)): RunnerJson<AckRequest>,
) -> Result<Json<Acked>, ApiError> {
    if !holds(&grant, &claim.job.id, claim.delivery) {
        return Err(beyond("this credential does not hold that claim"));
    }
    let acked = state.jobs.ack(&claim).await.map_err(ApiError::internal)?;
    Ok(Json(Acked { acked }))
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    JobId::parse(id)
        .ok_or_else(|| ApiError::bad_request("invalid-job-id", format!("{id:?} is not a job id")))
}

/// `POST /internal/v1/jobs/{id}/start`: marks the job running and hands over its work order.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    RunnerJson(req): RunnerJson<StartRequest>,
) -> Result<Json<Started>, ApiError> {
    let id = job_id(&id)?;
    if let Grant::Lane(lane) = grant {
        // A worker starts what it claimed from its lane: a job of that lane, a delivery not
        // older than the job's last.
        let refused = || beyond("this credential does not hold a claim of that job");
        let claim = req.claim.as_ref().ok_or_else(refused)?;
        let rec = record(&state, &id).await?;
        if claim.job.id != id
            || claim.delivery != req.attempt
            || rec.lane != lane
            || req.attempt < rec.attempts
        {
            return Err(refused());
        }
        // The embedded queue's claims are the server's: it must hold this one. A worker of
        // the Redis queue reaches Redis itself, where it could take any claim; asking Redis
        // again would bind it to nothing more than its lane already does.
        if state.config.queue.backend != crate::config::QueueBackend::Redis {
            let held = state
                .jobs
                .queue
                .heartbeat(claim, state.jobs.lease())
                .await
                .map_err(ApiError::internal)?;
            if !held {
                return Err(refused());
            }
        }
    } else if !holds(&grant, &id, req.attempt) {
        return Err(beyond(
            "this credential does not hold that delivery of that job",
        ));
    }
    let credential = state.jobs.runner_keys().claim(&id, req.attempt);
    let credential = Some(credential.expose().to_owned());
    let none = || {
        Json(Started {
            order: None,
            input_base64: String::new(),
            credential: credential.clone(),
        })
    };
    let Some(rec) = state.jobs.start(&id, req.route, req.attempt).await? else {
        return Ok(none());
    };
    let Some((function, version)) = crate::jobs::version_of(state.meta.as_ref(), &rec).await?
    else {
        // The function went away while the job waited: the job fails here, for good.
        state.jobs.fail_deleted(&rec).await?;
        return Ok(none());
    };
    let input = state
        .jobs
        .store
        .input(&id)
        .await
        .map_err(ApiError::internal)?
        .unwrap_or_default();
    let order = state.jobs.order(&rec, &function, &version, req.route);
    Ok(Json(Started {
        order: Some(order),
        input_base64: base64::engine::general_purpose::STANDARD.encode(&input),
        credential,
    }))
}

/// `POST /internal/v1/jobs/{id}/finish`: stores the end; `{"stored": false}` when the job had
/// already ended (the first end is the only result) or, for a claim's credential, a later
/// delivery of it has started.
pub async fn finish(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    RunnerJson(req): RunnerJson<FinishRequest>,
) -> Result<Json<Stored>, ApiError> {
    let id = job_id(&id)?;
    match &grant {
        Grant::All => {}
        Grant::Claim { job, delivery } if *job == id => {
            // A delivery that a later one has taken over has no end to hand back: it is not
            // kept, as an end after the first is not.
            if record(&state, &id).await?.attempts > *delivery {
                return Ok(Json(Stored { stored: false }));
            }
        }
        _ => return Err(beyond("this credential does not hold that job")),
    }
    if !matches!(
        req.end.status,
        wafer_core::JobStatus::Succeeded | wafer_core::JobStatus::Failed
    ) {
        return Err(ApiError::bad_request(
            "invalid-end",
            "a runner ends a job as succeeded or failed",
        ));
    }
    let output = base64::engine::general_purpose::STANDARD
        .decode(req.output_base64.as_bytes())
        .map_err(|e| ApiError::bad_request("invalid-output", e.to_string()))?;
    let stored = state.jobs.finish(&id, req.end, output.into()).await?;
    Ok(Json(Stored { stored }))
}

/// `POST /internal/v1/jobs/{id}/dead`: a runner found the job dead-lettered by the queue.
pub async fn dead(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    RunnerJson(req): RunnerJson<DeadRequest>,
) -> Result<Json<Buried>, ApiError> {
    let id = job_id(&id)?;
    let allowed = match grant {
        Grant::All => true,
        Grant::Lane(lane) => record(&state, &id).await?.lane == lane,
        Grant::Claim { .. } => false,
    };
    if !allowed {
        return Err(beyond("this credential does not reach that job"));
    }
    state.jobs.bury(&id, req.deliveries).await;
    Ok(Json(Buried {}))
}

/// `GET /internal/v1/artifacts/{fingerprint}/{digest}`: the compiled code of a module, for
/// runners that do not share the server's artifact directory. Only for an engine like the
/// server's (same fingerprint); otherwise 404, and the runner compiles the module itself.
pub async fn compiled(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path((fingerprint, digest)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    let digest = wafer_core::Digest::parse(&digest)
        .map_err(|e| ApiError::bad_request("invalid-digest", e.to_string()))?;
    module_of_grant(&state, &grant, &digest).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no compiled code for that engine and module",
        )
    };
    if fingerprint != state.runner.fingerprint() {
        return Err(missing());
    }
    state.runner.ensure_compiled(&digest).await?;
    let key = wafer_core::ArtifactKey::compiled(state.runner.fingerprint(), &digest)
        .map_err(ApiError::internal)?;
    let bytes = state
        .runner
        .artifacts()
        .get(&key)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(missing)?;
    Ok(axum::response::IntoResponse::into_response((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )))
}

/// `GET /internal/v1/modules/{digest}`: a module's bytes, for runners that compile it.
pub async fn module(
    State(state): State<Arc<AppState>>,
    Extension(grant): Extension<Grant>,
    Path(digest): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let digest = wafer_core::Digest::parse(&digest)
        .map_err(|e| ApiError::bad_request("invalid-digest", e.to_string()))?;
    module_of_grant(&state, &grant, &digest).await?;
    let bytes = state
        .runner
        .artifacts()
        .get(&wafer_core::ArtifactKey::Module(digest))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such module",
            )
        })?;
    Ok(axum::response::IntoResponse::into_response((
        [(header::CONTENT_TYPE, "application/wasm")],
        bytes,
    )))
}

/// Refuses a module (or its compiled code) that `grant` does not reach: a claim reaches the
/// module of its own job while the job has not ended; a lane, none.
async fn module_of_grant(
    state: &AppState,
    grant: &Grant,
    digest: &wafer_core::Digest,
) -> Result<(), ApiError> {
    let (job, delivery) = match grant {
        Grant::All => return Ok(()),
        Grant::Claim { job, delivery } => (job, *delivery),
        Grant::Lane(_) => return Err(beyond("a lane credential fetches no module")),
    };
    let refused = || beyond("this credential reaches only the module of its own job");
    let rec = record(state, job).await?;
    if rec.status.is_terminal() || rec.attempts > delivery {
        return Err(refused());
    }
    let module = crate::jobs::version_of(state.meta.as_ref(), &rec)
        .await?
        .map(|(_, v)| v.spec.module);
    if module.as_ref() != Some(digest) {
        return Err(refused());
    }
    Ok(())
}
