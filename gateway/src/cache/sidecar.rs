//! The cache as a process of its own: `wafer cache --listen ADDR --upstream URL`, an HTTP
//! proxy in front of a gateway (in the gateway's pod) that answers repeated invocations
//! itself with the same layer the gateway uses.
//!
//! The sidecar cannot authorise callers or resolve versions; it asks the gateway, with the
//! caller's own `Authorization` (and `Prefer`), for the [`Scope`] of each target at
//! `GET /v1/cache/scope/{target}` and keeps the answer for `scope_ttl`. That time is the
//! bound on staleness: a new version, a moved alias, a purge, a revoked key or a function
//! made private reaches the sidecar's answers within it. Everything that is not an
//! invocation is passed through untouched.

use super::{CacheConfig, CacheLayer, Key, ResponseCache, Scope, ScopeSource, SharedError};
use crate::http::problem::ApiError;
use crate::metrics::Metrics;
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the sidecar.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub upstream: String,
    /// How long a scope learnt from the gateway is used: the sidecar's staleness bound.
    pub scope_ttl: Duration,
    /// The largest request body a cacheable call may have.
    pub max_request_bytes: usize,
    /// Time a client has to send a cacheable call's body.
    pub body_timeout: Duration,
    /// The cache itself (levels, bounds), as in the gateway's `[cache]`.
    pub cache: CacheConfig,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Passes requests on to the gateway and its answers back.
#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    base: Arc<str>,
}

impl Upstream {
    async fn forward(&self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut rb = self
            .client
            .request(parts.method, format!("{}{path}", self.base));
        for (k, v) in &parts.headers {
            if !hop_by_hop(k) {
                rb = rb.header(k, v);
            }
        }
        let sent = rb
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await;
        let answer = match sent {
            Ok(a) => a,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-unavailable",
                    "Gateway unavailable",
                    format!("the cache could not reach the gateway: {e}"),
                )
                .into_response();
            }
        };
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = answer.status();
        for (k, v) in answer.headers() {
            if !hop_by_hop(k) {
                resp.headers_mut().append(k.clone(), v.clone());
            }
        }
        *resp.body_mut() = Body::from_stream(answer.bytes_stream());
        resp
    }
}

/// Scopes asked of the gateway, kept for `scope_ttl` per target and caller.
struct RemoteScopes {
    upstream: Upstream,
    scopes: moka::sync::Cache<Key, Option<Scope>>,
    max_request_bytes: usize,
    body_timeout: Duration,
}

#[derive(serde::Deserialize)]
struct ScopeAnswer {
    cacheable: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    policy: Option<wafer_core::CacheSpec>,
}

/// The request headers a scope depends on: who calls (`Authorization`), and whether the
/// call asks to become a job (`Prefer`).
const SCOPE_HEADERS: [HeaderName; 2] = [header::AUTHORIZATION, HeaderName::from_static("prefer")];

impl RemoteScopes {
    async fn fetch(&self, target: &str, headers: &HeaderMap) -> Result<Option<Scope>, ()> {
        let mut rb = self
            .upstream
            .client
            .get(format!("{}/v1/cache/scope/{target}", self.upstream.base))
            .timeout(Duration::from_secs(5));
        for name in SCOPE_HEADERS {
            for v in headers.get_all(&name) {
                rb = rb.header(name.clone(), v);
            }
        }
        let answer = rb.send().await.map_err(|_| ())?;
        if !answer.status().is_success() {
            // The gateway refuses the call (no such function, no key, …): the call itself
            // goes through and gets the same refusal.
            return Ok(None);
        }
        let a: ScopeAnswer = answer.json().await.map_err(|_| ())?;
        let digest = a
            .scope
            .and_then(|s| hex::decode(s).ok())
            .and_then(|d| Key::try_from(d).ok());
        Ok(match (a.cacheable, digest) {
            (true, Some(digest)) => Some(Scope {
                digest,
                policy: a.policy,
            }),
            _ => None,
        })
    }
}

#[async_trait]
impl ScopeSource for RemoteScopes {
    async fn scope(&self, parts: &mut Parts) -> Option<Scope> {
        let rest = parts.uri.path().strip_prefix("/fn/")?;
        let target = rest.split('/').next().filter(|t| !t.is_empty())?;
        let mut h = Sha256::new();
        h.update(target.as_bytes());
        for name in SCOPE_HEADERS {
            for v in parts.headers.get_all(&name) {
                h.update([0]);
                h.update(v.as_bytes());
            }
            h.update([1]);
        }
        let id: Key = h.finalize().into();
        if let Some(known) = self.scopes.get(&id) {
            return known;
        }
        // A gateway that cannot be asked now is asked again by the next call.
        let found = self.fetch(target, &parts.headers).await.ok()?;
        self.scopes.insert(id, found.clone());
        found
    }

    async fn read_body(&self, parts: &Parts, body: Body) -> Result<Bytes, Response> {
        crate::http::body::read_limited_within(
            &parts.headers,
            body,
            self.max_request_bytes,
            "request-too-large",
            self.body_timeout,
        )
        .await
        .map_err(IntoResponse::into_response)
    }
}

/// The sidecar's routes: invocations through the cache, `/_cache/metrics` for its own
/// metrics, everything else straight to the gateway.
pub fn router(config: SidecarConfig, metrics: Arc<Metrics>) -> Result<Router, SharedError> {
    let client = reqwest::Client::builder()
        // The client's redirects are the client's to follow.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SharedError::Backend(e.to_string()))?;
    let upstream = Upstream {
        client,
        base: config.upstream.trim_end_matches('/').into(),
    };
    let cache = ResponseCache::from_config(config.cache.clone(), metrics.clone())?;
    let reported = cache.clone();
    let scopes = RemoteScopes {
        upstream: upstream.clone(),
        scopes: moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.scope_ttl)
            .build(),
        max_request_bytes: config.max_request_bytes,
        body_timeout: config.body_timeout,
    };
    let forward = {
        let upstream = upstream.clone();
        tower::service_fn(move |req: Request| {
            let upstream = upstream.clone();
            async move { Ok::<_, std::convert::Infallible>(upstream.forward(req).await) }
        })
    };
    let cached = tower::Layer::layer(&CacheLayer::new(cache, scopes), forward.clone());
    Ok(Router::new()
        .route_service("/fn/{target}", cached.clone())
        .route_service("/fn/{target}/", cached.clone())
        .route_service("/fn/{target}/{*path}", cached)
        .route(
            "/_cache/metrics",
            axum::routing::get(move || {
                reported.report();
                let text = metrics.render();
                async move { text }
            }),
        )
        .fallback_service(forward))
}
