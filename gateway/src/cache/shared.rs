//! The shared level of the response cache: entries and purge generations that several
//! gateways (and sidecars) see alike. Redis is the backend; the trait is what the cache
//! needs of any store with per-entry expiry.
//!
//! The shared level is an optimisation, never a dependency: every operation has a deadline,
//! and a store that is down, slow or holding damaged entries makes the cache fall back to
//! running the function, counted in the metrics.

use super::entry::Key;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why the shared level could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// No connection (yet, or any more).
    #[error("the shared cache is not connected")]
    Down,
    /// The store took longer than the deadline.
    #[error("the shared cache did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error.
    #[error("the shared cache failed: {0}")]
    Backend(String),
    /// The settings cannot work.
    #[error("{0}")]
    Config(String),
}

/// A store shared between gateways.
#[async_trait]
pub trait SharedLevel: Send + Sync {
    /// Up to `limit + 1` bytes of the entry under `key` (so an entry over `limit` is seen
    /// to be one without reading it whole), or None when there is none.
    async fn get(&self, key: &Key, limit: usize) -> Result<Option<Vec<u8>>, SharedError>;
    /// Stores `value` under `key` for `ttl`.
    async fn put(&self, key: &Key, value: Vec<u8>, ttl: Duration) -> Result<(), SharedError>;
    /// The purge generation of a function (0 before its first purge).
    async fn generation(&self, function: &Key) -> Result<u64, SharedError>;
    /// Advances a function's purge generation and returns the new one.
    async fn bump(&self, function: &Key) -> Result<u64, SharedError>;
}

/// Settings of the shared level.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// Redis URL; empty: no shared level. `WAFER_CACHE_URL` overrides it (a password stays
    /// out of the file).
    pub url: String,
    /// The secret that seals the entries (HMAC-SHA256), at least 32 characters; the same on
    /// every gateway and sidecar sharing the level, and needed whenever `url` is set. Whoever
    /// can write to the Redis but lacks it cannot plant answers. `WAFER_CACHE_SECRET`
    /// overrides it.
    pub secret: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Deadline of each operation, ms; past it the call runs as if the entry were absent.
    pub timeout_ms: u64,
    /// How long a purge generation read from the shared level is trusted, ms: a purge on
    /// another gateway reaches this one's entries within this time.
    pub generation_ttl_ms: u64,
}

/// The shortest secret accepted for sealing entries.
pub const MIN_SECRET_LEN: usize = 32;

impl SharedConfig {
    /// The sealer of the entries, from the secret.
    pub fn sealer(&self) -> Result<super::Sealer, SharedError> {
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(SharedError::Config(format!(
                "the shared cache needs cache.shared.secret (or WAFER_CACHE_SECRET) of at least \
                 {MIN_SECRET_LEN} characters, the same on every gateway and sidecar: its \
                 entries are sealed with it"
            )));
        }
        Ok(super::Sealer::new(self.secret.as_bytes()))
    }
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password, and the secret is one.
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("SharedConfig")
            .field("url", &hidden(&self.url))
            .field("secret", &hidden(&self.secret))
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("generation_ttl_ms", &self.generation_ttl_ms)
            .finish()
    }
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            prefix: "wafer:cache".into(),
            timeout_ms: 100,
            generation_ttl_ms: 1000,
        }
    }
}

/// The Redis backend: entries as strings with `PX` expiry, generations as counters.
/// Connects in the background and reconnects by itself, so a Redis that is down at start
/// only means misses until it is up.
pub struct RedisLevel {
    con: Arc<RwLock<Option<ConnectionManager>>>,
    prefix: String,
    timeout: Duration,
}

impl RedisLevel {
    /// A level on the Redis at `config.url`; fails only on a malformed URL.
    pub fn new(config: &SharedConfig) -> Result<Self, SharedError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| SharedError::Backend(e.to_string()))?;
        let con = Arc::new(RwLock::new(None));
        let slot = con.clone();
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let made = client
                    .get_connection_manager_with_config(
                        ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(Duration::from_secs(1)))
                            .set_response_timeout(Some(timeout))
                            .set_number_of_retries(1),
                    )
                    .await;
                match made {
                    Ok(m) => {
                        *slot.write().expect("shared cache connection") = Some(m);
                        tracing::info!("shared response cache connected");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "shared response cache unreachable; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(Self {
            con,
            prefix: config.prefix.clone(),
            timeout,
        })
    }

    fn entry(&self, key: &Key) -> String {
        format!("{}:e:{}", self.prefix, hex::encode(key))
    }

    fn gen_key(&self, function: &Key) -> String {
        format!("{}:g:{}", self.prefix, hex::encode(function))
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, SharedError> {
        let Some(mut con) = self.con.read().expect("shared cache connection").clone() else {
            return Err(SharedError::Down);
        };
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut con)).await {
            Err(_) => Err(SharedError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(SharedError::Backend(e.to_string())),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

#[async_trait]
impl SharedLevel for RedisLevel {
    async fn get(&self, key: &Key, limit: usize) -> Result<Option<Vec<u8>>, SharedError> {
        // GETRANGE reads at most limit + 1 bytes; a missing key reads as empty, which no
        // entry is.
        let bytes: Vec<u8> = self
            .run(
                redis::cmd("GETRANGE")
                    .arg(self.entry(key))
                    .arg(0)
                    .arg(limit as u64),
            )
            .await?;
        Ok((!bytes.is_empty()).then_some(bytes))
    }

    async fn put(&self, key: &Key, value: Vec<u8>, ttl: Duration) -> Result<(), SharedError> {
        let ms = (ttl.as_millis() as u64).max(1);
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.entry(key))
                .arg(value)
                .arg("PX")
                .arg(ms),
        )
        .await
    }

    async fn generation(&self, function: &Key) -> Result<u64, SharedError> {
        let v: Option<u64> = self
            .run(redis::cmd("GET").arg(self.gen_key(function)))
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn bump(&self, function: &Key) -> Result<u64, SharedError> {
        self.run(redis::cmd("INCR").arg(self.gen_key(function)))
            .await
    }
}
