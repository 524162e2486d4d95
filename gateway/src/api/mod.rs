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

/// Reads a body of at most `limit` bytes; a declared or actual larger body is a 413 before
/// more than `limit` bytes are buffered.
pub async fn read_limited(
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
    match Limited::new(body, limit).collect().await {
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
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_limited(headers, body, limit, "request-too-large").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid-json", format!("invalid JSON body: {e}")))
}
