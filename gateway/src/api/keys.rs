//! `/v1/keys`: admins create, list and revoke API keys for tenants.

use crate::api::auth;
use crate::http::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use wafer_core::{Scope, TenantId};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    tenant: TenantId,
    scopes: Vec<Scope>,
}

/// Creates a key; the key is in the response once and stored only as a hash.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let req: NewKey = super::read_json(&state, &headers, body).await?;
    let mut scopes = req.scopes.clone();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() || scopes.len() != req.scopes.len() {
        return Err(ApiError::bad_request(
            "invalid-json",
            "scopes must list each of admin, deploy, invoke, read, metrics at most once, and \
             at least one",
        ));
    }
    let (key, rec) = auth::create_key(&state, req.tenant, scopes).await?;
    tracing::info!(key_id = %rec.id, tenant = %rec.tenant, "created API key");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": key.expose(),
            "id": rec.id,
            "tenant": rec.tenant,
            "scopes": rec.scopes,
        })),
    ))
}

/// Lists every key's public record (id, tenant, scopes, created); never a secret.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    let keys = state.meta.list_keys().await?;
    Ok(Json(json!({ "keys": keys })))
}

/// Revokes a key by its public id; it stops working at once.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    auth::require(&state, &headers, Scope::Admin).await?;
    if !state.meta.delete_key(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "key-not-found",
            "Key not found",
            format!("no API key with id {id:?}"),
        ));
    }
    tracing::info!(key_id = %id, "revoked API key");
    Ok(StatusCode::NO_CONTENT)
}
