//! HTTP handlers, one module per resource. Handlers are thin: extract, call, return.

pub mod auth;
pub mod functions;
pub mod health;
pub mod internal;
pub mod invoke;
pub mod jobs;
pub mod keys;
pub mod modules;

pub(crate) use crate::http::body::content_length;
use crate::http::problem::ApiError;
use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
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
    let timeout = Duration::from_millis(state.config.body_timeout_ms);
    crate::http::body::read_limited_within(headers, body, limit, slug, timeout).await
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

/// Serde helpers for integer fields of request bodies: JSON Schema's `integer` includes
/// `5.0`, so integral numbers written with a fraction are accepted; anything else is an error.
pub mod json_int {
    use serde::{Deserialize, Deserializer, de::Error};

    fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or_else(|| {
                    D::Error::custom(format!("expected a non-negative integer, got {n}"))
                }),
        }
    }

    /// An optional `u64`.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        integral(d)
    }

    /// A required `u32`.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        integral(d)?
            .ok_or_else(|| D::Error::custom("expected an integer, got null"))
            .and_then(|n| {
                u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
            })
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "super::opt_u64")]
            a: Option<u64>,
            #[serde(deserialize_with = "super::u32")]
            b: u32,
        }

        #[test]
        fn integral_numbers_in_any_spelling_are_integers() {
            let t: T = serde_json::from_str(r#"{"a": 5.0, "b": 7}"#).unwrap();
            assert_eq!((t.a, t.b), (Some(5), 7));
            let t: T = serde_json::from_str(r#"{"b": 1e3}"#).unwrap();
            assert_eq!((t.a, t.b), (None, 1000));
            for bad in [
                r#"{"b": 1.5}"#,
                r#"{"b": -1}"#,
                r#"{"b": 5000000000}"#,
                r#"{"a": "1", "b": 1}"#,
            ] {
                assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
            }
        }
    }
}
