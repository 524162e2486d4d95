//! API keys: generation, hashing, and finding the caller of a request.
//!
//! A key is `wfr_` followed by 64 hex digits of randomness; only its SHA-256 is stored, so a
//! leaked database does not leak keys. Keys are never logged: [`Secret`] hides them.

use crate::http::problem::ApiError;
use crate::state::AppState;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use wafer_core::{KeyRecord, Scope, TenantId};

pub use wafer_core::Secret;

/// A new random API key.
pub fn generate_key() -> Secret {
    let bytes: [u8; 32] = rand::random();
    Secret::new(format!("wfr_{}", hex::encode(bytes)))
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates and stores a key for `tenant` with `scopes`; returns the key (shown once).
pub async fn create_key(
    state: &AppState,
    tenant: TenantId,
    scopes: Vec<Scope>,
) -> Result<(Secret, KeyRecord), ApiError> {
    let key = generate_key();
    let hash = hash_key(key.expose());
    let rec = KeyRecord {
        id: format!("key_{}", &hash[..12]),
        tenant,
        scopes,
        created: wafer_core::now_unix(),
    };
    state.meta.put_key(&hash, rec.clone()).await?;
    Ok((key, rec))
}

/// The key record behind the request's `Authorization: Bearer` header, if any.
/// A header that is present but wrong is an error, never silently anonymous.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<KeyRecord>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    if !token.starts_with("wfr_") || token.len() > 200 {
        return Err(ApiError::unauthorized("unknown API key"));
    }
    match state.meta.get_key(&hash_key(token)).await? {
        Some(rec) => Ok(Some(rec)),
        None => Err(ApiError::unauthorized("unknown API key")),
    }
}

/// The caller of an invocation: only a `Bearer wfr_…` header is a Wafer key; any other
/// Authorization header belongs to the function (e.g. its own Basic auth) and is ignored here.
pub async fn invoker(state: &AppState, headers: &HeaderMap) -> Result<Option<KeyRecord>, ApiError> {
    match headers.get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes().starts_with(b"Bearer wfr_") => caller(state, headers).await,
        _ => Ok(None),
    }
}

/// The caller, who must exist and hold `scope`.
pub async fn require(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<KeyRecord, ApiError> {
    let rec = caller(state, headers).await?.ok_or_else(|| {
        ApiError::unauthorized("an API key is required: `Authorization: Bearer <key>`")
    })?;
    if !rec.allows(scope) {
        return Err(ApiError::forbidden(format!(
            "this key lacks the {scope:?} scope"
        )));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashes_stable() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("wfr_") && a.expose().len() == 68);
        assert_eq!(hash_key("x"), hash_key("x"));
        assert_eq!(format!("{a:?}"), "Secret(***)");
    }
}
