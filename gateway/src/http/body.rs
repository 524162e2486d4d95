//! Reading request bodies with bounds, shared by the API and the cache sidecar.

use crate::http::problem::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use std::time::Duration;

/// The `Content-Length` a request declares, if it declares one that parses.
pub fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads a body of at most `limit` bytes within `timeout`: a declared or actual larger body
/// is a 413 `slug` before more than `limit` bytes are buffered, and a body that does not
/// arrive in time is a 408 (a trickling client cannot hold a slot forever). A body that is known to be empty is answered at once, without a timer.
pub async fn read_limited_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    slug: &'static str,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
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
