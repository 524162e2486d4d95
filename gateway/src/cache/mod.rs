//! The response cache: answers repeated invocations without running the function.
//!
//! A request is looked up under a key of everything that can change the answer. Its
//! [`Scope`] is who asks for what: the function's tenant and name, the caller's tenant,
//! whether the caller sees a failing function's log, the version and its whole spec (module
//! digest and configuration, so a new version or a moved alias never serves an old answer)
//! and the function's purge generation. To that the key adds the method, path and query, a
//! digest of the body and the values of the request headers the version names in
//! `cache.vary`.
//!
//! An answer's own `Vary` is honoured as RFC 9111 (section 4.1) asks: the URL's key then
//! holds a vary record naming those request headers, and each answer is kept under a key
//! that adds the request's values of them; `Vary: *` is never kept.
//!
//! GET and HEAD answers are kept for their `Cache-Control` `s-maxage`/`max-age` (or the
//! version's `cache.ttl_ms`), and served for `stale-while-revalidate` more while one caller
//! revalidates; POST answers only when the version declares POST pure (`cache.methods`).
//! Never kept: errors, `no-store`, `private`, `no-cache`, answers with `Set-Cookie`, bodies
//! over `max_entry_bytes`; requests with credentials of their own (`Authorization` other
//! than a Wafer key, `Cookie`) bypass the cache unless the version's `cache.credentials`
//! allows them.
//!
//! Two levels: a moka cache bounded by bytes with a time to live per entry, and an optional
//! shared level (Redis) that several gateways and sidecars read and fill alike; its entries
//! are sealed with a keyed MAC under a server secret, so a writer of that Redis cannot plant
//! answers. Concurrent identical misses run the function once: the first runs it, the others
//! wait for its answer, and take it only when it may be kept and was selected by the same
//! request headers; otherwise each runs its own request, and so do later callers for a while
//! (hit-for-miss), so answers that are never kept do not queue callers behind each other.
//!
//! The cache sits in front of invocation as a tower layer ([`layer`]); the same layer in
//! front of an HTTP proxy is the sidecar ([`sidecar`]).

mod entry;
pub mod layer;
pub mod shared;
pub mod sidecar;

pub use entry::{Key, Stored, X_CACHE};
pub use layer::{CacheLayer, ScopeSource};
pub use shared::{SharedConfig, SharedError, SharedLevel};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;
pub use entry::{Kept, Sealer, VaryRecord};
use entry::{cacheable_status, freshness, now_ms, variant_key, vary_names};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wafer_core::{CacheSpec, FunctionRecord, TenantId, VersionRecord};

/// Cache settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether the gateway caches responses at all.
    pub enabled: bool,
    /// Bytes the in-process level may hold (bodies and headers).
    pub max_bytes: u64,
    /// The largest answer kept, bytes.
    pub max_entry_bytes: usize,
    /// The shared level (off unless a URL is given).
    pub shared: SharedConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            shared: SharedConfig::default(),
        }
    }
}

/// Room for an entry's headers and framing in the shared level, beyond its body.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Who asks for which version of a function: the part of every key that does not depend on
/// the request itself. Computed where the caller is authorised (the gateway), and handed
/// to a sidecar by `GET /v1/cache/scope/{target}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The digest of the function, caller, version, spec and purge generation.
    pub digest: Key,
    /// The version's cache policy.
    pub policy: Option<CacheSpec>,
}

/// Whether a request carries credentials of its own (not a Wafer key, which the gateway
/// checked and the function never sees).
fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::COOKIE)
        || headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| !v.as_bytes().starts_with(b"Bearer wfr_"))
}

/// Feeds length-prefixed parts to a hash, so no two sequences of parts collide.
struct Parts(Sha256);

impl Parts {
    fn new() -> Self {
        Self(Sha256::new())
    }
    fn part(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    fn finish(self) -> Key {
        self.0.finalize().into()
    }
}

/// The id of a function for its purge generation: its tenant and name.
fn function_id(tenant: &TenantId, name: &str) -> Key {
    let mut p = Parts::new();
    p.part(tenant.as_str().as_bytes()).part(name.as_bytes());
    p.finish()
}

/// The digest of a version's whole spec (module digest, limits, env, policy).
pub fn spec_digest(version: &VersionRecord) -> Key {
    Sha256::digest(serde_json::to_vec(&version.spec).unwrap_or_default()).into()
}

/// SHA-256 of nothing: the body digest of most cacheable calls.
const EMPTY_BODY: Key = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

impl Scope {
    /// Whether a request may use the cache at all (before its body is read).
    pub fn admits(&self, method: &Method, headers: &HeaderMap) -> bool {
        let policy = self.policy.as_ref();
        let method_ok = *method == Method::GET
            || *method == Method::HEAD
            || (*method == Method::POST
                && policy.is_some_and(|p| p.methods.iter().any(|m| m == "POST")));
        let no_store = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-store"));
        method_ok
            && !no_store
            && (!has_credentials(headers) || policy.is_some_and(|p| p.credentials))
    }

    /// The key of an admitted request.
    pub fn key(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Key {
        let mut p = Parts::new();
        p.part(&self.digest)
            .part(method.as_str().as_bytes())
            .part(path.as_bytes());
        if body.is_empty() {
            p.part(&EMPTY_BODY);
        } else {
            p.part(&Sha256::digest(body));
        }
        if let Some(policy) = &self.policy {
            for name in &policy.vary {
                p.part(name.as_bytes());
                for v in headers.get_all(name.as_str()) {
                    p.part(v.as_bytes());
                }
            }
            if policy.credentials {
                for name in [header::AUTHORIZATION, header::COOKIE] {
                    for v in headers.get_all(name) {
                        p.part(v.as_bytes());
                    }
                }
            }
        }
        p.finish()
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh answer.
    Hit(Arc<Stored>),
    /// An answer past its freshness but within `stale-while-revalidate`: serve it; with a
    /// leader, this caller starts the revalidation.
    Stale(Arc<Stored>, Option<Leader>),
    /// No answer: this caller runs the function and hands the answer on.
    Lead(Leader),
}

/// How a flight ended, for those who waited on it.
#[derive(Clone)]
enum Landed {
    /// An answer that may be kept: under `key`, the variant of the flight's URL that the
    /// request headers `names` select.
    Kept {
        stored: Arc<Stored>,
        names: Arc<[HeaderName]>,
        key: Key,
    },
    /// An answer that may not be kept: no one else may have it.
    NotKept,
}

type Flight = watch::Receiver<Option<Landed>>;

/// How many functions' purge generations are held in memory.
const MAX_GENERATIONS: u64 = 100_000;

/// How long callers of a key whose answer could not be kept pass to the function without
/// waiting for each other (hit-for-miss).
const HIT_FOR_MISS: Duration = Duration::from_secs(10);

/// How many times a lookup starts again (after a flight it waited on ended without an answer
/// for it) before it runs its own request.
const MAX_LOOKUPS: usize = 8;

/// The caller that runs the function: for everyone waiting on the same key (a flight), or
/// for itself alone (hit-for-miss).
pub struct Leader {
    cache: Arc<ResponseCache>,
    /// The URL's key (before any `Vary`).
    base: Key,
    /// The key the flight is for: `base`, or a variant of it.
    key: Key,
    tx: Option<watch::Sender<Option<Landed>>>,
    ttl_ms: Option<u64>,
    post: bool,
}

/// The response cache: both levels, the flights under way and the purge generations.
pub struct ResponseCache {
    config: CacheConfig,
    entries: moka::sync::Cache<Key, Kept>,
    /// Per function: its purge generation, part of every scope, so a purge makes all its
    /// entries unreachable at once (they then expire); with when it was last read from the
    /// shared level.
    generations: moka::sync::Cache<Key, (u64, Instant)>,
    /// Without a shared level: the last generation handed out (generations are unique across
    /// functions), and the highest one evicted from `generations`, below which no function's
    /// generation reads, so an evicted purge is never undone.
    last_generation: AtomicU64,
    generation_floor: Arc<AtomicU64>,
    flights: Mutex<HashMap<Key, Flight>>,
    shared: Option<(Arc<dyn SharedLevel>, Sealer)>,
    metrics: Arc<crate::metrics::Metrics>,
}

struct PerEntryTtl;

impl moka::Expiry<Key, Kept> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, v: &Kept, _: Instant) -> Option<Duration> {
        Some(v.remaining())
    }

    fn expire_after_update(
        &self,
        _: &Key,
        v: &Kept,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        // A revalidated answer replaces the stale one with its own lifetime.
        Some(v.remaining())
    }
}

impl ResponseCache {
    /// A cache with `config`, its shared level on `shared` (entries sealed by its sealer),
    /// counting into `metrics`.
    pub fn new(
        config: CacheConfig,
        shared: Option<(Arc<dyn SharedLevel>, Sealer)>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Self::build(config, shared, metrics, MAX_GENERATIONS)
    }

    fn build(
        config: CacheConfig,
        shared: Option<(Arc<dyn SharedLevel>, Sealer)>,
        metrics: Arc<crate::metrics::Metrics>,
        max_generations: u64,
    ) -> Arc<Self> {
        let evictions = metrics.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_: &Key, v: &Kept| v.weight())
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
        let generation_floor = Arc::new(AtomicU64::new(0));
        let floor = generation_floor.clone();
        let generations = moka::sync::Cache::builder()
            .max_capacity(max_generations)
            .eviction_listener(move |_, (g, _): (u64, Instant), _| {
                floor.fetch_max(g, Ordering::AcqRel);
            })
            .build();
        Arc::new(Self {
            config,
            entries,
            generations,
            last_generation: AtomicU64::new(0),
            generation_floor,
            flights: Mutex::new(HashMap::new()),
            shared,
            metrics,
        })
    }

    /// A cache with its shared level built from `config` (Redis when a URL is set; then
    /// its secret must be set too).
    pub fn from_config(
        config: CacheConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, SharedError> {
        let shared: Option<(Arc<dyn SharedLevel>, Sealer)> = if config.shared.url.is_empty() {
            None
        } else {
            let sealer = config.shared.sealer()?;
            Some((Arc::new(shared::RedisLevel::new(&config.shared)?), sealer))
        };
        Ok(Self::new(config, shared, metrics))
    }

    /// The cache's settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The metrics the cache counts into.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The purge generation of a function: this process's own, or the shared level's when
    /// there is one (read again at most every `generation_ttl_ms`; when the shared level
    /// cannot be read, the last one known).
    async fn generation(&self, id: &Key) -> u64 {
        let known = self.generations.get(id);
        let Some((shared, _)) = &self.shared else {
            let floor = self.generation_floor.load(Ordering::Acquire);
            return known.map_or(floor, |k| k.0.max(floor));
        };
        let ttl = Duration::from_millis(self.config.shared.generation_ttl_ms);
        if let Some((g, at)) = known
            && at.elapsed() < ttl
        {
            return g;
        }
        let last = known.map_or(0, |k| k.0);
        let g = match shared.generation(id).await {
            Ok(g) => g.max(last),
            Err(e) => {
                tracing::debug!(error = %e, "purge generation unreadable");
                self.metrics.cache_shared("error");
                last
            }
        };
        self.generations.insert(*id, (g, Instant::now()));
        g
    }

    /// The scope of a call of `version` of `function` (whose spec has the digest `spec`) by
    /// `caller`.
    pub async fn scope(
        &self,
        (function, version, spec): (&FunctionRecord, &VersionRecord, &Key),
        caller: Option<&TenantId>,
        sees_logs: bool,
    ) -> Scope {
        let generation = self
            .generation(&function_id(&function.tenant, function.name.as_str()))
            .await;
        let mut p = Parts::new();
        p.part(function.tenant.as_str().as_bytes())
            .part(function.name.as_str().as_bytes())
            // Callers of different tenants never share an entry, even for a public function.
            .part(caller.map_or(&b"-"[..], |t| t.as_str().as_bytes()))
            // The owner may see what a failing function printed; others may not: never
            // one answer for both.
            .part(&[u8::from(sees_logs)])
            .part(&generation.to_le_bytes())
            .part(&version.version.to_le_bytes())
            .part(spec);
        Scope {
            digest: p.finish(),
            policy: version.spec.cache.clone(),
        }
    }

    /// Makes every kept answer of a function unreachable, in both levels (owner's purge,
    /// and deletion). Fails when the shared level could not be told; this process's own
    /// entries are purged anyway.
    pub async fn purge(&self, tenant: &TenantId, name: &str) -> Result<(), SharedError> {
        let id = function_id(tenant, name);
        let Some((shared, _)) = &self.shared else {
            // Unique and above every generation handed out or evicted before.
            let next = self.last_generation.fetch_add(1, Ordering::AcqRel) + 1;
            self.generations.insert(id, (next, Instant::now()));
            return Ok(());
        };
        let next = self.generations.get(&id).map_or(0, |k| k.0) + 1;
        self.generations.insert(id, (next, Instant::now()));
        let g = shared.bump(&id).await?;
        self.generations.insert(id, (g.max(next), Instant::now()));
        Ok(())
    }

    /// Brings the metrics that are read off the cache (bytes held) up to date.
    pub fn report(&self) {
        self.entries.run_pending_tasks();
        self.metrics.set_cache_bytes(self.entries.weighted_size());
    }

    /// Counts a call that may not use the cache.
    pub fn bypass(&self) {
        self.metrics.cache_event("bypass");
    }

    /// Looks up the answer for a request whose URL has the key `base` and whose headers are
    /// `request`: in this process, then (for the caller that leads a new flight) in the
    /// shared level; or waits for the answer of a flight already under way.
    pub async fn lookup(
        self: &Arc<Self>,
        base: Key,
        request: &HeaderMap,
        policy: Option<&CacheSpec>,
        post: bool,
    ) -> Lookup {
        let ttl_ms = policy.and_then(|p| p.ttl_ms);
        for _ in 0..MAX_LOOKUPS {
            let mut key = base;
            let mut found = self.entries.get(&base);
            if let Some(Kept::Vary(record)) = &found {
                key = variant_key(&base, &record.names, request);
                found = self.entries.get(&key);
            }
            match found {
                Some(Kept::Answer(e)) if e.is_fresh() => {
                    self.metrics.cache_event("hit");
                    return Lookup::Hit(e);
                }
                Some(Kept::Answer(e)) if !e.remaining().is_zero() => {
                    self.metrics.cache_event("stale");
                    let leader = self.start_flight(base, key, ttl_ms, post).ok();
                    return Lookup::Stale(e, leader);
                }
                Some(Kept::Pass(_)) => return self.pass(base, key, ttl_ms, post),
                _ => {}
            }
            let mut waiting = match self.start_flight(base, key, ttl_ms, post) {
                Ok(leader) => match self.lead(leader).await {
                    Some(found) => return found,
                    // The shared level told of a vary record: look again with it.
                    None => continue,
                },
                Err(rx) => rx,
            };
            let landed = match waiting.wait_for(Option::is_some).await {
                Ok(landed) => landed.clone(),
                // The leader went away (its client hung up): look again.
                Err(_) => continue,
            };
            match landed {
                Some(Landed::Kept { stored, names, key })
                    if variant_key(&base, &names, request) == key =>
                {
                    if !stored.is_fresh() && !stored.remaining().is_zero() {
                        self.metrics.cache_event("stale");
                        return Lookup::Stale(stored, None);
                    }
                    self.metrics.cache_event("hit");
                    return Lookup::Hit(stored);
                }
                // Another variant's answer: look again, now with its vary record.
                Some(Landed::Kept { .. }) => continue,
                Some(Landed::NotKept) | None => return self.pass(base, key, ttl_ms, post),
            }
        }
        self.pass(base, base, ttl_ms, post)
    }

    /// A caller that runs its own request, for itself alone.
    fn pass(self: &Arc<Self>, base: Key, key: Key, ttl_ms: Option<u64>, post: bool) -> Lookup {
        self.metrics.cache_event("miss");
        Lookup::Lead(Leader {
            cache: self.clone(),
            base,
            key,
            tx: None,
            ttl_ms,
            post,
        })
    }

    /// Starts a flight for `key` (`base` or one of its variants), or returns the one under
    /// way.
    fn start_flight(
        self: &Arc<Self>,
        base: Key,
        key: Key,
        ttl_ms: Option<u64>,
        post: bool,
    ) -> Result<Leader, Flight> {
        let mut flights = self.flights.lock().expect("flights");
        if let Some(rx) = flights.get(&key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key, rx);
        Ok(Leader {
            cache: self.clone(),
            base,
            key,
            tx: Some(tx),
            ttl_ms,
            post,
        })
    }

    /// The new leader of a flight looks in the shared level before anything runs. None when
    /// the shared level held the URL's vary record: it is now in this process, and the
    /// caller looks again (the flight ends, and its waiters look again too).
    async fn lead(self: &Arc<Self>, leader: Leader) -> Option<Lookup> {
        let found = match self.read_shared(&leader.key).await {
            None => {
                self.metrics.cache_event("miss");
                return Some(Lookup::Lead(leader));
            }
            Some(Kept::Vary(record)) if leader.key == leader.base => {
                self.entries.insert(leader.base, Kept::Vary(record));
                return None;
            }
            Some(Kept::Answer(found)) => found,
            // A vary record under a variant's key, which no cache writes.
            Some(_) => {
                self.metrics.cache_shared("invalid");
                self.metrics.cache_event("miss");
                return Some(Lookup::Lead(leader));
            }
        };
        self.entries.insert(leader.key, Kept::Answer(found.clone()));
        if let Some(tx) = &leader.tx {
            let names = match self.entries.get(&leader.base) {
                Some(Kept::Vary(r)) if leader.key != leader.base => r.names.clone().into(),
                _ => Arc::from([]),
            };
            let _ = tx.send(Some(Landed::Kept {
                stored: found.clone(),
                names,
                key: leader.key,
            }));
        }
        if found.is_fresh() {
            self.metrics.cache_event("hit");
            // Dropping the leader ends the flight: the waiters have their answer.
            return Some(Lookup::Hit(found));
        }
        self.metrics.cache_event("stale");
        Some(Lookup::Stale(found, Some(leader)))
    }

    /// What the shared level holds under `key`, if it is usable: damaged, foreign, unsealed,
    /// oversized and expired entries are ignored and counted, and so is a level that cannot
    /// answer.
    async fn read_shared(&self, key: &Key) -> Option<Kept> {
        let (shared, sealer) = self.shared.as_ref()?;
        let limit = self.config.max_entry_bytes + MAX_HEAD_BYTES;
        let result = match shared.get(key, limit).await {
            Err(e) => {
                tracing::debug!(error = %e, "shared cache read failed");
                Err("error")
            }
            Ok(None) => Err("miss"),
            Ok(Some(b)) if b.len() > limit => Err("oversized"),
            Ok(Some(b)) => match sealer.decode(key, &b) {
                None => Err("invalid"),
                Some(Kept::Answer(s)) if s.body.len() > self.config.max_entry_bytes => {
                    Err("oversized")
                }
                Some(Kept::Answer(s)) if !cacheable_status(s.status) => Err("invalid"),
                Some(k) if k.remaining().is_zero() => Err("miss"),
                Some(k) => Ok(k),
            },
        };
        self.metrics.cache_shared(match &result {
            Ok(_) => "hit",
            Err(why) => why,
        });
        result.ok()
    }

    /// Puts what `key` holds into the shared level, in the background.
    fn write_shared(&self, key: Key, kept: &Kept) {
        let Some((shared, sealer)) = &self.shared else {
            return;
        };
        let Some(bytes) = sealer.encode(&key, kept) else {
            return;
        };
        let (shared, ttl, metrics) = (shared.clone(), kept.remaining(), self.metrics.clone());
        tokio::spawn(async move {
            let r = shared.put(&key, bytes, ttl).await;
            metrics.cache_shared(if r.is_ok() { "stored" } else { "store_error" });
        });
    }
}

/// Headers never kept with an answer: framing is set anew when it is served, and `Age` and
/// `x-cache` describe one delivery.
fn kept_header(name: &HeaderName) -> bool {
    ![
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::AGE,
        X_CACHE,
    ]
    .contains(name)
}

impl Leader {
    /// Keeps the answer when it may be kept (in both levels, under the variant its `Vary`
    /// and `request` select), hands it to everyone waiting only then, and returns it marked
    /// `x-cache: miss` (304 when `conditional` and `request` names its `ETag`).
    pub async fn finish(self, resp: Response, request: &HeaderMap, conditional: bool) -> Response {
        let (parts, body) = resp.into_parts();
        let body = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let headers: Vec<(HeaderName, HeaderValue)> = parts
            .headers
            .iter()
            .filter(|(k, _)| kept_header(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // An answer that was already old when it arrived (from a cache upstream) is as old
        // here.
        let age_ms = parts
            .headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |s| s.saturating_mul(1000));
        let names = vary_names(&headers);
        let keep = freshness(&headers).and_then(|f| {
            let policy = self.ttl_ms.map(Duration::from_millis);
            // A POST answer has no freshness of its own: the version's ttl decides.
            let fresh = if self.post {
                policy
            } else {
                f.max_age.or(policy)
            }?;
            (!fresh.is_zero()).then_some((fresh, f.stale))
        });
        let (fresh, stale) = keep.unwrap_or_default();
        let stored = Arc::new(Stored {
            status: parts.status,
            headers,
            body,
            stored_ms: now_ms().saturating_sub(age_ms),
            fresh,
            stale,
        });
        let cache = &self.cache;
        let landed = match names {
            Some(names)
                if keep.is_some()
                    && cacheable_status(parts.status)
                    && stored.body.len() <= cache.config.max_entry_bytes
                    && !stored.remaining().is_zero() =>
            {
                let key = variant_key(&self.base, &names, request);
                if !names.is_empty() {
                    let record = cache.vary_record(&self.base, &names, &stored);
                    cache.write_shared(self.base, &record);
                    cache.entries.insert(self.base, record);
                }
                let kept = Kept::Answer(stored.clone());
                cache.write_shared(key, &kept);
                cache.entries.insert(key, kept);
                cache.metrics.cache_stored(stored.body.len() as u64);
                Landed::Kept {
                    stored: stored.clone(),
                    names: names.into(),
                    key,
                }
            }
            _ => {
                // The flight's leader marks the key hit-for-miss; callers already passing
                // leave the mark as it is (one write per mark, not one per call).
                if self.tx.is_some() {
                    let until = now_ms() + HIT_FOR_MISS.as_millis() as u64;
                    cache.entries.insert(self.key, Kept::Pass(until));
                }
                Landed::NotKept
            }
        };
        if let Some(tx) = &self.tx {
            let _ = tx.send(Some(landed));
        }
        stored.response("miss", conditional.then_some(request))
    }
}

impl ResponseCache {
    /// The vary record to keep under `base` for an answer that varies by `names`: it lives as
    /// long as the longest-lived answer it leads to.
    fn vary_record(&self, base: &Key, names: &[HeaderName], stored: &Stored) -> Kept {
        let until_ms = now_ms() + stored.remaining().as_millis() as u64;
        if let Some(Kept::Vary(old)) = self.entries.get(base)
            && old.names == names
            && old.until_ms >= until_ms
        {
            return Kept::Vary(old);
        }
        Kept::Vary(Arc::new(VaryRecord {
            names: names.to_vec(),
            until_ms,
        }))
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // The flight ends with its leader: after the answer, or when the leader went away
        // (its client hung up), which lets waiters look again and one of them lead.
        if self.tx.is_some()
            && let Ok(mut flights) = self.cache.flights.lock()
        {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_body_digest_is_sha256_of_nothing() {
        assert_eq!(EMPTY_BODY, <[u8; 32]>::from(Sha256::digest(b"")));
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

    fn scope(policy: Option<CacheSpec>) -> Scope {
        Scope {
            digest: [7; 32],
            policy,
        }
    }

    #[test]
    fn keys_differ_by_every_part_of_the_request_that_can_change_the_answer() {
        let policy = CacheSpec {
            ttl_ms: Some(1000),
            methods: vec!["POST".into()],
            vary: vec!["accept-language".into()],
            credentials: false,
        };
        let s = scope(Some(policy));
        let h = HeaderMap::new();
        let base = s.key(&Method::GET, "/?a=1", &h, b"");
        assert_eq!(base, s.key(&Method::GET, "/?a=1", &h, b""));
        assert_ne!(base, s.key(&Method::HEAD, "/?a=1", &h, b""));
        assert_ne!(base, s.key(&Method::GET, "/?a=2", &h, b""));
        assert_ne!(base, s.key(&Method::GET, "/?a=1", &h, b"x"));
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        assert_ne!(base, s.key(&Method::GET, "/?a=1", &fr, b""));
        let mut other = HeaderMap::new();
        other.insert("x-other", HeaderValue::from_static("1"));
        assert_eq!(
            base,
            s.key(&Method::GET, "/?a=1", &other, b""),
            "not in vary"
        );
        let mut t = s.clone();
        t.digest = [8; 32];
        assert_ne!(base, t.key(&Method::GET, "/?a=1", &h, b""), "another scope");
    }

    #[tokio::test]
    async fn a_purge_holds_when_its_generation_leaves_memory() {
        let cache = ResponseCache::build(CacheConfig::default(), None, Default::default(), 8);
        let tenant = TenantId::new("t").unwrap();
        // Far more functions purged than generations held: each purge must hold all the
        // same, whether its generation was evicted or never admitted.
        let mut purged = Vec::new();
        for i in 0..200 {
            let name = format!("f{i}");
            let id = function_id(&tenant, &name);
            let before = cache.generation(&id).await;
            cache.purge(&tenant, &name).await.unwrap();
            let after = cache.generation(&id).await;
            assert!(after > before, "{name}");
            purged.push((id, after));
        }
        cache.generations.run_pending_tasks();
        assert!(cache.generations.entry_count() <= 8);
        for (id, after) in &purged {
            assert!(
                cache.generation(id).await >= *after,
                "the entries from before a purge stay unreachable"
            );
        }
        // A later purge still moves a function on.
        let (id, _) = purged[0];
        let now = cache.generation(&id).await;
        cache.purge(&tenant, "f0").await.unwrap();
        assert!(cache.generation(&id).await > now);
    }

    #[test]
    fn posts_need_a_pure_declaration_and_credentials_an_opt_in() {
        let h = HeaderMap::new();
        assert!(scope(None).admits(&Method::GET, &h));
        assert!(!scope(None).admits(&Method::POST, &h));
        assert!(!scope(None).admits(&Method::PUT, &h));
        let pure = CacheSpec {
            ttl_ms: Some(1),
            methods: vec!["POST".into()],
            vary: vec![],
            credentials: false,
        };
        assert!(scope(Some(pure.clone())).admits(&Method::POST, &h));
        let mut cookie = HeaderMap::new();
        cookie.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        assert!(!scope(Some(pure.clone())).admits(&Method::GET, &cookie));
        let opted = CacheSpec {
            credentials: true,
            ..pure
        };
        assert!(scope(Some(opted)).admits(&Method::GET, &cookie));
        let mut no_store = HeaderMap::new();
        no_store.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(!scope(None).admits(&Method::GET, &no_store));
    }
}
