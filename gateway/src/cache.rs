//! The response cache: answers repeated invocations without running the function.
//!
//! A request is looked up only after it is authorised, under a key of everything that can
//! change the answer: the function's tenant, name and incarnation, the version and its module
//! and configuration (so a new version or a moved alias never serves an old answer), the
//! method, path and query, a digest of the body and the values of the request headers the
//! version names in `cache.vary`. GET and HEAD answers are kept for their `Cache-Control`
//! `s-maxage`/`max-age` (or the version's `cache.ttl_ms`); POST answers only when the version
//! declares POST pure (`cache.methods`). Never kept: errors, `no-store`, `private`, answers
//! with `Set-Cookie`, bodies over `cache.max_entry_bytes`; requests with credentials of their
//! own (`Authorization` other than a Wafer key, `Cookie`) bypass the cache unless the
//! version's `cache.credentials` allows them.
//!
//! Entries live in a moka cache bounded by bytes, each with its own time to live. Concurrent
//! identical misses run the function once: the first runs it, the others wait for its answer
//! (whatever it is, so a failing function does not stampede either).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wafer_core::{FunctionRecord, VersionRecord};

/// Cache settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether the gateway caches responses at all.
    pub enabled: bool,
    /// Bytes the in-process cache may hold (bodies and headers).
    pub max_bytes: u64,
    /// The largest answer kept, bytes.
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// A cache key: the SHA-256 of everything that can change the answer.
pub type Key = [u8; 32];

/// A kept answer.
#[derive(Debug)]
pub struct Stored {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

impl Stored {
    fn weight(&self) -> u32 {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        u32::try_from(self.body.len() + h + 64).unwrap_or(u32::MAX)
    }

    /// The answer, marked with how it was found and its age; 304 without a body when the
    /// request's `If-None-Match` names the answer's `ETag`.
    pub fn response(&self, how: &'static str, request: Option<&HeaderMap>) -> Response {
        let etag = self
            .headers
            .iter()
            .find(|(k, _)| *k == header::ETAG)
            .map(|(_, v)| v.as_bytes());
        let not_modified = etag.is_some_and(|etag| {
            request.is_some_and(|h| {
                h.get_all(header::IF_NONE_MATCH)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|t| {
                        let t = t.trim();
                        t == "*"
                            || t.trim_start_matches("W/").as_bytes()
                                == etag.strip_prefix(b"W/").unwrap_or(etag)
                    })
            })
        });
        let mut resp = if not_modified {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(Body::from(self.body.clone()));
            *r.status_mut() = self.status;
            r
        };
        let h = resp.headers_mut();
        for (k, v) in &self.headers {
            if not_modified && (*k == header::CONTENT_TYPE || *k == header::CONTENT_LENGTH) {
                continue;
            }
            h.append(k.clone(), v.clone());
        }
        h.insert(X_CACHE, HeaderValue::from_static(how));
        if how == "hit" {
            h.insert(
                header::AGE,
                HeaderValue::from(self.stored.elapsed().as_secs()),
            );
        }
        resp
    }
}

/// The `x-cache` header: `hit`, `miss` or `bypass`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

struct PerEntryTtl;

impl moka::Expiry<Key, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &Key,
        v: &Arc<Stored>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The parts of an authorised request that decide its cache key.
#[derive(Clone, Copy)]
pub struct CacheRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path below the function, with its query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
    /// Whether the caller may see what a failing function printed (its owner).
    pub sees_logs: bool,
    /// The caller's tenant (None: anonymous).
    pub caller: Option<&'a wafer_core::TenantId>,
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer.
    Hit(Response),
    /// No answer: this caller runs the function and hands the answer on.
    Lead(Leader),
    /// Not cacheable: run the function and answer with `x-cache: bypass`.
    Bypass,
}

/// The caller that runs the function for everyone waiting on the same key.
pub struct Leader {
    cache: Arc<ResponseCache>,
    key: Key,
    tx: watch::Sender<Option<Arc<Stored>>>,
    ttl_ms: Option<u64>,
    post: bool,
}

/// The in-process response cache.
pub struct ResponseCache {
    config: CacheConfig,
    entries: moka::sync::Cache<Key, Arc<Stored>>,
    /// Per function (name, incarnation): a generation that is part of every key, so a
    /// purge makes all its entries unreachable at once (they then expire).
    generations: moka::sync::Cache<(String, u64), u64>,
    flights: Mutex<HashMap<Key, watch::Receiver<Option<Arc<Stored>>>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Whether a request carries credentials of its own (not a Wafer key, which the gateway
/// checked and the function never sees).
fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::COOKIE)
        || headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| !v.as_bytes().starts_with(b"Bearer wfr_"))
}

/// The freshness lifetime an answer's `Cache-Control` allows, or why it may not be kept.
fn freshness(headers: &[(HeaderName, HeaderValue)]) -> Result<Option<Duration>, ()> {
    let mut max_age = None;
    let mut s_maxage = None;
    for (k, v) in headers {
        if k == header::SET_COOKIE {
            return Err(());
        }
        if k != header::CACHE_CONTROL {
            continue;
        }
        for directive in v.to_str().map_err(|_| ())?.split(',') {
            let d = directive.trim().to_ascii_lowercase();
            let (name, value) = d.split_once('=').unwrap_or((d.as_str(), ""));
            let secs = || value.trim_matches('"').parse::<u64>().ok();
            match name.trim() {
                "no-store" | "private" | "no-cache" => return Err(()),
                "max-age" => max_age = secs(),
                "s-maxage" => s_maxage = secs(),
                _ => {}
            }
        }
    }
    Ok(s_maxage.or(max_age).map(Duration::from_secs))
}

impl ResponseCache {
    /// A cache with `config`, counting into `metrics`.
    pub fn new(config: CacheConfig, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        let evictions = metrics.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_: &Key, v: &Arc<Stored>| v.weight())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| {
                use moka::notification::RemovalCause;
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => "purged",
                    RemovalCause::Replaced => return,
                };
                evictions.cache_eviction(cause);
            })
            .build();
        Arc::new(Self {
            config,
            entries,
            generations: moka::sync::Cache::new(100_000),
            flights: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Makes every kept answer of `function` unreachable (owner's purge).
    pub fn purge(&self, function: &FunctionRecord) {
        let id = (function.name.to_string(), function.incarnation);
        let next = self.generations.get(&id).unwrap_or(0) + 1;
        self.generations.insert(id, next);
    }

    /// The key of a request, or None when it may not use the cache.
    pub fn key_of(
        &self,
        function: &FunctionRecord,
        version: &VersionRecord,
        req: &CacheRequest<'_>,
    ) -> Option<Key> {
        let CacheRequest {
            method,
            path,
            headers,
            body,
            sees_logs,
            caller,
        } = *req;
        let policy = version.spec.cache.as_ref();
        let method_ok = *method == Method::GET
            || *method == Method::HEAD
            || (*method == Method::POST
                && policy.is_some_and(|p| p.methods.iter().any(|m| m == "POST")));
        if !method_ok || (has_credentials(headers) && !policy.is_some_and(|p| p.credentials)) {
            return None;
        }
        let no_store = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-store"));
        if no_store {
            return None;
        }
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(function.tenant.as_str().as_bytes());
        let generation = self
            .generations
            .get(&(function.name.to_string(), function.incarnation))
            .unwrap_or(0);
        part(&generation.to_le_bytes());
        // Callers of different tenants never share an entry, even for a public function.
        part(caller.map_or(&b"-"[..], |t| t.as_str().as_bytes()));
        part(function.name.as_str().as_bytes());
        part(&function.incarnation.to_le_bytes());
        part(&version.version.to_le_bytes());
        part(&serde_json::to_vec(&version.spec).unwrap_or_default());
        part(method.as_str().as_bytes());
        part(path.as_bytes());
        part(&Sha256::digest(body));
        // The owner may see what a failing function printed; others may not: never one
        // answer for both.
        part(&[u8::from(sees_logs)]);
        if let Some(p) = policy {
            for name in &p.vary {
                part(name.as_bytes());
                for v in headers.get_all(name.as_str()) {
                    part(v.as_bytes());
                }
            }
            if p.credentials {
                for v in headers.get_all(header::AUTHORIZATION) {
                    part(v.as_bytes());
                }
                for v in headers.get_all(header::COOKIE) {
                    part(v.as_bytes());
                }
            }
        }
        Some(h.finalize().into())
    }

    /// Looks a request up: a hit, the lead of a new flight, or the answer of a flight
    /// already under way.
    pub async fn lookup(
        self: &Arc<Self>,
        key: Option<Key>,
        version: &VersionRecord,
        method: &Method,
        request: &HeaderMap,
    ) -> Lookup {
        let Some(key) = key else {
            self.metrics.cache_event("bypass");
            return Lookup::Bypass;
        };
        loop {
            if let Some(hit) = self.entries.get(&key) {
                self.metrics.cache_event("hit");
                return Lookup::Hit(hit.response("hit", Some(request)));
            }
            let waiting = {
                let mut flights = self.flights.lock().expect("flights");
                match flights.get(&key) {
                    Some(rx) => Some(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(key, rx);
                        drop(flights);
                        self.metrics.cache_event("miss");
                        return Lookup::Lead(Leader {
                            cache: self.clone(),
                            key,
                            tx,
                            ttl_ms: version.spec.cache.as_ref().and_then(|p| p.ttl_ms),
                            post: *method == Method::POST,
                        });
                    }
                }
            };
            if let Some(mut rx) = waiting {
                // The leader's answer, whatever it is; if it went away, look again.
                if let Ok(answer) = rx.wait_for(Option::is_some).await
                    && let Some(stored) = answer.as_ref()
                {
                    self.metrics.cache_event("hit");
                    return Lookup::Hit(stored.response("hit", Some(request)));
                }
            }
        }
    }

    /// Drops every entry (all tenants); purges per function come with the purge route.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

impl Leader {
    /// Hands the answer to everyone waiting, keeps it when it may be kept, and returns it
    /// marked `x-cache: miss`.
    pub async fn finish(self, resp: Response) -> Response {
        let (parts, body) = resp.into_parts();
        let cap = self.cache.config.max_entry_bytes;
        let body = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let headers: Vec<(HeaderName, HeaderValue)> = parts
            .headers
            .iter()
            .filter(|(k, _)| *k != X_CACHE)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let keep = match freshness(&headers) {
            Err(()) => None,
            Ok(declared) => {
                let policy = self.ttl_ms.map(Duration::from_millis);
                // A POST answer has no freshness of its own: the version's ttl decides.
                let ttl = if self.post {
                    policy
                } else {
                    declared.or(policy)
                };
                ttl.filter(|t| !t.is_zero())
            }
        };
        let cacheable_status = matches!(parts.status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308);
        let stored = Arc::new(Stored {
            status: parts.status,
            headers,
            body,
            stored: Instant::now(),
            ttl: keep.unwrap_or_default(),
        });
        if let Some(ttl) = keep
            && cacheable_status
            && stored.body.len() <= cap
            && !ttl.is_zero()
        {
            self.cache.entries.insert(self.key, stored.clone());
            self.cache.metrics.cache_stored(stored.body.len() as u64);
        }
        let _ = self.tx.send(Some(stored.clone()));
        self.cache
            .flights
            .lock()
            .expect("flights")
            .remove(&self.key);
        let mut resp = stored.response("miss", None);
        // The original status and headers of this caller's answer, with the marker.
        *resp.status_mut() = parts.status;
        resp
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // A leader that went away (its client hung up) lets waiters run on their own.
        if let Ok(mut flights) = self.cache.flights.lock()
            && flights
                .get(&self.key)
                .is_some_and(|rx| rx.borrow().is_none())
        {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &'static str) -> Vec<(HeaderName, HeaderValue)> {
        vec![(header::CACHE_CONTROL, HeaderValue::from_static(v))]
    }

    #[test]
    fn cache_control_decides_what_is_kept_and_for_how_long() {
        assert_eq!(
            freshness(&cc("max-age=60")),
            Ok(Some(Duration::from_secs(60)))
        );
        assert_eq!(
            freshness(&cc("public, max-age=60, s-maxage=5")),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(freshness(&[]), Ok(None));
        for never in ["no-store", "private, max-age=60", "no-cache"] {
            assert_eq!(freshness(&cc(never)), Err(()), "{never}");
        }
        let cookie = vec![
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            ),
            (header::SET_COOKIE, HeaderValue::from_static("a=b")),
        ];
        assert_eq!(freshness(&cookie), Err(()));
    }

    #[test]
    fn only_a_wafer_key_is_not_a_credential() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wfr_x"),
        );
        assert!(!has_credentials(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        assert!(has_credentials(&h));
        let mut c = HeaderMap::new();
        c.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        assert!(has_credentials(&c));
    }
}
