//! `POST /v1/keys`: admins create API keys for tenants.

use crate::auth;
use crate::problem::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
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
    if req.scopes.is_empty() || req.scopes.len() > 4 {
        return Err(ApiError::bad_request(
            "invalid-json",
            "scopes must list one to four of admin, deploy, invoke, read",
        ));
    }
    let mut scopes = req.scopes;
    scopes.sort();
    scopes.dedup();
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
