//! `PUT /v1/modules`: upload, validate, detect the ABI and compile once.

use crate::api::auth;
use crate::http::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use wafer_core::{ModuleRecord, Scope};

/// Uploads a module. 201 when new for this tenant, 200 when already uploaded.
#[tracing::instrument(skip_all, fields(tenant))]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = auth::require(&state, &headers, Scope::Deploy).await?;
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !matches!(mime, "application/wasm" | "application/octet-stream") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("upload modules as application/wasm, not {mime:?}"),
            ));
        }
    }
    let limit = state.config.max_module_bytes as usize;
    let bytes = super::read_limited(&state, &headers, body, limit, "module-too-large").await?;
    let size = bytes.len() as u64;
    // The module and its compiled code (a few times its size) must leave the data disk's
    // reserve free: a store that fails a write on a full disk is unusable until a restart.
    crate::disk::room(
        &state.config.data_dir,
        size.saturating_mul(5),
        state.config.jobs.min_free_disk_mb,
    )?;
    let _slot = tokio::time::timeout(
        Duration::from_millis(state.config.compile_wait_ms),
        state.compiles.clone().acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::overloaded("all compile slots are busy"))?
    .map_err(ApiError::internal)?;
    let compiled = state.runner.compile(bytes).await?;
    wafer_core::crash_point("artifacts-stored");
    let (digest, abi) = (compiled.digest, compiled.abi);
    let rec = ModuleRecord {
        digest: digest.clone(),
        size,
        abi,
        created: wafer_core::now_unix(),
        min_memory_bytes: compiled.requirements.map_or(0, |r| r.initial_bytes),
    };
    let created = state
        .meta
        .put_module(&caller.tenant, rec, &state.config.quotas)
        .await?;
    tracing::info!(%digest, size, abi = abi.as_str(), created, "module uploaded");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "digest": digest, "size": size, "abi": abi })),
    ))
}
