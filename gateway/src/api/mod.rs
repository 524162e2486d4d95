//! HTTP handlers, one module per resource. Handlers are thin: extract, call, return.

pub mod functions;
pub mod health;
pub mod invoke;
pub mod keys;
pub mod modules;

use crate::problem::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use std::time::Duration;

use crate::state::AppState;

/// Reads a body of at most `limit` bytes; a declared or actual larger body is a 413 before
/// more than `limit` bytes are buffered, and a body that does not arrive within the body
/// timeout is a 408 (a trickling client cannot hold a slot forever).
pub async fn read_limited(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    slug: &'static str,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            slug,
            "Payload too large",
            format!("the body exceeds the limit of {limit} bytes"),
        )
        .with("limit", limit)
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(state.config.body_timeout_ms);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(
            "invalid-body",
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Reads and parses a JSON body, with problem+json errors for every failure.
pub async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let limit = state.config.max_json_bytes;
    let bytes = read_limited(state, headers, body, limit, "request-too-large").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid-json", format!("invalid JSON body: {e}")))
}
