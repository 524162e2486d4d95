//! The records Wafer keeps about modules, functions, versions and API keys.

use crate::names::{AliasName, Digest, FunctionName, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a module talks to the world, detected from its exports at upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// A component exporting `wasi:http/incoming-handler`: it sees the whole HTTP request.
    Http,
    /// A WASI command (preview 1 module or preview 2 component): body on stdin, stdout back.
    Command,
}

impl Abi {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Abi::Http => "http",
            Abi::Command => "command",
        }
    }
}

/// An uploaded module as one tenant sees it. The bytes live once in the artifact store; the
/// record is per tenant so that a digest is never an oracle for another tenant's uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// Content address of the module bytes.
    pub digest: Digest,
    /// Size of the module in bytes.
    pub size: u64,
    /// The ABI detected at upload.
    pub abi: Abi,
    /// Unix seconds of the first upload by this tenant.
    pub created: u64,
    /// Bytes of memory and tables an instance holds before running any code (0: unknown);
    /// a version's memory limit may not be below it.
    #[serde(default)]
    pub min_memory_bytes: u64,
}

/// What a client asks for when it creates a version (`PUT /v1/functions/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSpec {
    /// The module this version runs.
    pub module: Digest,
    /// The module's ABI (copied from the module record so invocation needs one lookup).
    pub abi: Abi,
    /// Wall-clock limit of one invocation.
    pub timeout_ms: u64,
    /// Linear memory limit of one invocation, in MiB.
    pub memory_mb: u64,
    /// Fuel (deterministic CPU budget) of one invocation.
    pub fuel: u64,
    /// Environment variables the function sees; the host's environment is never visible.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether anyone may invoke it without an API key.
    #[serde(default)]
    pub public: bool,
    /// Whether a command also gets the call's method and path in `WAFER_METHOD` and
    /// `WAFER_PATH`. Off by default: a command's environment is exactly `env`, as under
    /// `wasmtime run`, so programs that check their environment behave the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_env: bool,
    /// Declared run length: `long` sends its jobs to dedicated runners whatever their
    /// estimate; `short` keeps them off the long lane. None: decided by the estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<JobClass>,
    /// How the response cache may keep this version's answers (None: by their
    /// `Cache-Control` alone, for GET and HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// A version's response-cache policy, as its owner declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// How long an answer may be kept when the function sets no `max-age`, ms; required for
    /// POST, whose answers carry no freshness of their own.
    #[serde(default, deserialize_with = "integral")]
    pub ttl_ms: Option<u64>,
    /// Methods besides GET and HEAD whose answers may be kept: `POST` for pure functions
    /// (the same body always gives the same answer).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers (lowercase names) whose values select different answers.
    #[serde(default)]
    pub vary: Vec<String>,
    /// Whether requests carrying credentials (`Authorization`, `Cookie`) may be answered
    /// from, and fill, the cache.
    #[serde(default)]
    pub credentials: bool,
}

/// An optional non-negative integer that JSON may spell with a fraction of zero (`5.0`), as
/// JSON Schema's `integer` allows.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
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
            .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, got {n}"))),
    }
}

impl CacheSpec {
    /// The most `vary` headers a version may name.
    pub const MAX_VARY: usize = 16;
    /// The longest `ttl_ms`: a day.
    pub const MAX_TTL_MS: u64 = 86_400_000;

    /// Checks the policy and puts it in canonical form (header names lowercase, sorted and
    /// unique; methods uppercase), so equal policies compare and hash equal.
    pub fn normalized(mut self) -> Result<Self, String> {
        if let Some(t) = self.ttl_ms
            && (t == 0 || t > Self::MAX_TTL_MS)
        {
            return Err(format!(
                "cache.ttl_ms must be between 1 and {}",
                Self::MAX_TTL_MS
            ));
        }
        for m in &mut self.methods {
            m.make_ascii_uppercase();
        }
        self.methods.retain(|m| m != "GET" && m != "HEAD");
        self.methods.sort();
        self.methods.dedup();
        if let Some(m) = self.methods.iter().find(|m| *m != "POST") {
            return Err(format!(
                "cache.methods may name POST (GET and HEAD are always cacheable), not {m:?}"
            ));
        }
        if !self.methods.is_empty() && self.ttl_ms.is_none() {
            return Err("caching POST needs cache.ttl_ms".into());
        }
        if self.vary.len() > Self::MAX_VARY {
            return Err(format!(
                "cache.vary names at most {} headers",
                Self::MAX_VARY
            ));
        }
        for h in &mut self.vary {
            h.make_ascii_lowercase();
            let token = !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
            if !token {
                return Err(format!("cache.vary: {h:?} is not a header name"));
            }
        }
        self.vary.sort();
        self.vary.dedup();
        Ok(self)
    }
}

/// How long a function's runs are, as its owner declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobClass {
    /// Seconds at most: never a dedicated runner.
    Short,
    /// Minutes to hours: always a dedicated runner.
    Long,
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The function this version belongs to.
    pub function: FunctionName,
    /// The version number, from 1, never reused while the function exists.
    pub version: u32,
    /// The configuration frozen into this version.
    #[serde(flatten)]
    pub spec: VersionSpec,
    /// Unix seconds of creation.
    pub created: u64,
}

/// A function: a name owned by a tenant, with its versions and aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name (global).
    pub name: FunctionName,
    /// The tenant that created it; nobody else can see it.
    pub tenant: TenantId,
    /// The highest version number created so far.
    pub latest_version: u32,
    /// Alias name → version number; `latest` always exists.
    pub aliases: BTreeMap<AliasName, u32>,
    /// Unix seconds of creation.
    pub created: u64,
    /// Random identity of this function, new when a deleted name is created again, so
    /// nothing kept about the old function (such as logs) shows up under the new one.
    #[serde(default)]
    pub incarnation: u64,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Create API keys for any tenant.
    Admin,
    /// Upload modules and create or change functions.
    Deploy,
    /// Invoke the tenant's functions.
    Invoke,
    /// Read functions, versions and modules.
    Read,
    /// Read the operator's `/metrics` (every tenant's function names and counts).
    Metrics,
}

/// A stored API key. The key itself is never stored, only its hash (the store key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A public identifier of the key, safe to log.
    pub id: String,
    /// The tenant the key acts for.
    pub tenant: TenantId,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Unix seconds of creation.
    pub created: u64,
}

impl KeyRecord {
    /// Whether the key grants `scope` (admin keys grant everything).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// The most one tenant may hold; uploads and deploys past it are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Modules uploaded (and not yet collected as unused).
    pub modules: u64,
    /// Bytes of those modules together.
    pub module_bytes: u64,
    /// Functions.
    pub functions: u64,
    /// Versions of one function.
    pub versions_per_function: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            modules: 100_000,
            module_bytes: 4 << 30,
            functions: 100_000,
            versions_per_function: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ttl: Option<u64>, methods: &[&str], vary: &[&str]) -> CacheSpec {
        CacheSpec {
            ttl_ms: ttl,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            vary: vary.iter().map(|v| v.to_string()).collect(),
            credentials: false,
        }
    }

    #[test]
    fn cache_policies_are_checked_and_canonical() {
        let n = spec(
            Some(1000),
            &["post", "GET", "POST"],
            &["Accept-Language", "accept"],
        )
        .normalized()
        .unwrap();
        assert_eq!(n.methods, vec!["POST"]);
        assert_eq!(n.vary, vec!["accept", "accept-language"]);
        assert!(
            spec(None, &["POST"], &[]).normalized().is_err(),
            "POST needs a ttl"
        );
        assert!(spec(Some(1), &["PUT"], &[]).normalized().is_err());
        assert!(spec(Some(0), &[], &[]).normalized().is_err());
        assert!(
            spec(Some(CacheSpec::MAX_TTL_MS + 1), &[], &[])
                .normalized()
                .is_err()
        );
        assert!(spec(None, &[], &["bad header"]).normalized().is_err());
        let many: Vec<String> = (0..17).map(|i| format!("x-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(spec(None, &[], &many).normalized().is_err());
        assert!(spec(None, &["get", "head"], &[]).normalized().is_ok());
        let parsed: CacheSpec = serde_json::from_str(r#"{"ttl_ms": 5.0}"#).unwrap();
        assert_eq!(parsed.ttl_ms, Some(5));
        assert!(serde_json::from_str::<CacheSpec>(r#"{"ttl_ms": 5.5}"#).is_err());
    }
}
