//! Health, readiness, metrics and the OpenAPI document.

use crate::http::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::sync::Arc;
use wafer_core::Scope;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the metadata store answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    match state.meta.get_key("readiness-probe").await {
        Ok(_) => Ok(Json(json!({ "status": "ready" }))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("metadata store unavailable: {e}"),
        )),
    }
}

/// Prometheus text exposition. It names every tenant's functions, so it takes a key with the
/// `metrics` scope (or an admin key).
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    crate::api::auth::require(&state, &headers, Scope::Metrics).await?;
    state.cache.report();
    state
        .metrics
        .set_queue_corrupt(state.jobs.queue.corrupt_entries());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    ))
}

/// Collects unused modules and compiled code now (admin); the server also does so every
/// `gc_interval_s`.
pub async fn collect_garbage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<crate::gc::GcReport>, ApiError> {
    crate::api::auth::require(&state, &headers, Scope::Admin).await?;
    crate::gc::collect(&state, state.config.gc_grace_s)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

/// The OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `GET /v1/admin/status`: runner processes alive and jobs per lane (waiting or running), for
/// operators (scope `metrics`). With no work, no worker or dedicated runner exists.
pub async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    crate::api::auth::require(&state, &headers, Scope::Metrics).await?;
    let mut lanes = serde_json::Map::new();
    for lane in wafer_core::Lane::ALL {
        let n = state
            .jobs
            .queue
            .len(lane)
            .await
            .map_err(ApiError::internal)?;
        lanes.insert(lane.as_str().to_owned(), n.into());
    }
    Ok(Json(serde_json::json!({
        "runners": {
            "workers": state.fleet.workers(),
            "dedicated": state.fleet.dedicated(),
            "max_workers": state.jobs.config().workers,
        },
        "queues": lanes,
    })))
}
