//! A kept answer: what of a response is stored, how long it stays fresh (and then stale but
//! usable while it is revalidated), how it is answered again (with `Age`, and 304 for a
//! matching `If-None-Match`), and its byte form in the shared level.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cache key: the SHA-256 of everything that can change the answer.
pub type Key = [u8; 32];

/// The `x-cache` header: `hit`, `miss`, `stale` or `bypass`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Milliseconds since the Unix epoch; ages count from it, so an answer stored by another
/// process has the right `Age`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A kept answer.
#[derive(Debug, PartialEq)]
pub struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
    /// When it was stored, ms since the epoch.
    pub(crate) stored_ms: u64,
    /// How long it is fresh.
    pub(crate) fresh: Duration,
    /// How long after that it may still be served while it is revalidated.
    pub(crate) stale: Duration,
}

/// How long an answer may be kept, from its `Cache-Control`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Freshness {
    /// `s-maxage`, else `max-age`, if either is given.
    pub max_age: Option<Duration>,
    /// `stale-while-revalidate`.
    pub stale: Duration,
}

/// The freshness an answer's headers allow, or None when it may never be kept (`no-store`,
/// `private`, `no-cache`, `Set-Cookie`, a `Cache-Control` that is not text).
pub fn freshness(headers: &[(HeaderName, HeaderValue)]) -> Option<Freshness> {
    let mut max_age = None;
    let mut s_maxage = None;
    let mut stale = Duration::ZERO;
    for (k, v) in headers {
        if k == header::SET_COOKIE {
            return None;
        }
        if k != header::CACHE_CONTROL {
            continue;
        }
        for directive in v.to_str().ok()?.split(',') {
            let d = directive.trim().to_ascii_lowercase();
            let (name, value) = d.split_once('=').unwrap_or((d.as_str(), ""));
            let secs = || {
                value
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs)
            };
            match name.trim() {
                "no-store" | "private" | "no-cache" => return None,
                "max-age" => max_age = secs(),
                "s-maxage" => s_maxage = secs(),
                "stale-while-revalidate" => stale = secs().unwrap_or_default(),
                _ => {}
            }
        }
    }
    Some(Freshness {
        max_age: s_maxage.or(max_age),
        stale,
    })
}

/// Whether a status may be kept (RFC 9111's heuristically cacheable ones we can answer
/// again as they were).
pub fn cacheable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308)
}

/// Whether `If-None-Match` names the `etag` (weak comparison, as RFC 9110 asks for GET).
fn matches_etag(request: &HeaderMap, etag: &[u8]) -> bool {
    let strip = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
    let etag = strip(etag);
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || strip(t.as_bytes()) == etag
        })
}

impl Stored {
    /// The bytes it costs in the in-process level.
    pub(crate) fn weight(&self) -> u32 {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        u32::try_from(self.body.len() + h + 64).unwrap_or(u32::MAX)
    }

    /// How old it is.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.stored_ms))
    }

    /// Whether it is still fresh.
    pub fn is_fresh(&self) -> bool {
        self.age() < self.fresh
    }

    /// How long it may still be served at all (fresh or stale); zero when it may not.
    pub fn remaining(&self) -> Duration {
        (self.fresh + self.stale).saturating_sub(self.age())
    }

    /// The answer, marked with how it was found (`x-cache`) and its age; 304 without a
    /// body when `request` has an `If-None-Match` naming the answer's `ETag`.
    pub fn response(&self, how: &'static str, request: Option<&HeaderMap>) -> Response {
        let etag = self
            .headers
            .iter()
            .find(|(k, _)| *k == header::ETAG)
            .map(|(_, v)| v.as_bytes());
        let not_modified = etag.is_some_and(|e| request.is_some_and(|h| matches_etag(h, e)));
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
        if how != "miss" {
            h.insert(header::AGE, HeaderValue::from(self.age().as_secs()));
        }
        resp
    }
}

/// The request headers that select among a URL's answers (RFC 9111 section 4.1), from a
/// response's `Vary`: lower-case, sorted, without duplicates; empty when it has none. None
/// when the answer may not be kept: `Vary: *`, a name that is not a header name, or more
/// than [`MAX_VARY_NAMES`] names.
pub fn vary_names(headers: &[(HeaderName, HeaderValue)]) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for (_, v) in headers.iter().filter(|(k, _)| *k == header::VARY) {
        for name in v.to_str().ok()?.split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    (names.len() <= MAX_VARY_NAMES).then_some(names)
}

/// The most request headers one answer may vary by.
pub const MAX_VARY_NAMES: usize = 16;

/// The key of the answer, among those kept under `base`, for a request with `headers`:
/// `base` itself when the answer varies by nothing, else a digest of `base` and the
/// request's values of each of `names` (an absent header is one value too).
pub fn variant_key(base: &Key, names: &[HeaderName], headers: &HeaderMap) -> Key {
    if names.is_empty() {
        return *base;
    }
    let mut h = Sha256::new();
    h.update(base);
    for name in names {
        h.update((name.as_str().len() as u64).to_le_bytes());
        h.update(name.as_str());
        for v in headers.get_all(name) {
            h.update([1]);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        h.update([0]);
    }
    h.finalize().into()
}

/// Under a URL's key when its answers vary by request headers: which ones, and until when
/// (ms since the epoch) the record holds. Each answer is kept under its [`variant_key`].
#[derive(Debug, PartialEq, Eq)]
pub struct VaryRecord {
    pub(crate) names: Vec<HeaderName>,
    pub(crate) until_ms: u64,
}

impl VaryRecord {
    /// How long it still holds.
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.until_ms.saturating_sub(now_ms()))
    }
}

/// What a key holds in the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// An answer.
    Answer(Arc<Stored>),
    /// The answers of this URL vary by request headers: look under the variant's key.
    Vary(Arc<VaryRecord>),
    /// Hit-for-miss, until the time given (ms since the epoch): the last answer under this key
    /// could not be kept, so callers run their own requests without waiting for each other.
    /// In this process only.
    Pass(u64),
}

impl Kept {
    /// How long it stays.
    pub fn remaining(&self) -> Duration {
        match self {
            Kept::Answer(s) => s.remaining(),
            Kept::Vary(r) => r.remaining(),
            Kept::Pass(until) => Duration::from_millis(until.saturating_sub(now_ms())),
        }
    }

    /// The bytes it costs in the in-process level.
    pub fn weight(&self) -> u32 {
        match self {
            Kept::Answer(s) => s.weight(),
            Kept::Vary(r) => 64 + r.names.iter().map(|n| n.as_str().len() as u32).sum::<u32>(),
            Kept::Pass(_) => 64,
        }
    }
}

/// Seals the entries of the shared level with HMAC-SHA256 under a server secret, so only
/// processes holding the secret can write an entry the cache will serve.
#[derive(Clone)]
pub struct Sealer(Hmac<Sha256>);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self(Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"))
    }

    fn mac(&self, key: &Key, kind: u8, rest: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(key);
        m.update(&[kind]);
        m.update(rest);
        m.finalize().into_bytes().into()
    }

    /// The byte form of what `key` holds in the shared level: a magic, a MAC over the key,
    /// the kind and the fields (so a damaged, planted or moved entry is refused), the kind,
    /// then the fields. None for what the shared level never holds (hit-for-miss).
    pub fn encode(&self, key: &Key, kept: &Kept) -> Option<Vec<u8>> {
        let mut rest = Vec::new();
        let kind = match kept {
            Kept::Answer(s) => {
                rest.reserve(s.body.len() + 256);
                rest.extend_from_slice(&s.status.as_u16().to_le_bytes());
                rest.extend_from_slice(&s.stored_ms.to_le_bytes());
                rest.extend_from_slice(&(s.fresh.as_millis() as u64).to_le_bytes());
                rest.extend_from_slice(&(s.stale.as_millis() as u64).to_le_bytes());
                rest.extend_from_slice(&(s.headers.len() as u32).to_le_bytes());
                for (k, v) in &s.headers {
                    put_chunk(&mut rest, k.as_str().as_bytes());
                    put_chunk(&mut rest, v.as_bytes());
                }
                put_chunk(&mut rest, &s.body);
                KIND_ANSWER
            }
            Kept::Vary(r) => {
                rest.extend_from_slice(&r.until_ms.to_le_bytes());
                rest.extend_from_slice(&(r.names.len() as u32).to_le_bytes());
                for n in &r.names {
                    put_chunk(&mut rest, n.as_str().as_bytes());
                }
                KIND_VARY
            }
            Kept::Pass(_) => return None,
        };
        let mut out = Vec::with_capacity(rest.len() + 37);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.mac(key, kind, &rest));
        out.push(kind);
        out.extend_from_slice(&rest);
        Some(out)
    }

    /// Reads an entry of the shared level back, refusing anything damaged, foreign or not
    /// sealed with this secret.
    pub fn decode(&self, key: &Key, bytes: &[u8]) -> Option<Kept> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (sum, rest) = rest.split_at_checked(32)?;
        let (&kind, rest) = rest.split_first()?;
        // The comparison is constant-time: a MAC must not be guessed byte by byte.
        let mut m = self.0.clone();
        m.update(key);
        m.update(&[kind]);
        m.update(rest);
        m.verify_slice(sum).ok()?;
        let mut r = Reader(rest);
        let kept = match kind {
            KIND_ANSWER => {
                let status =
                    StatusCode::from_u16(u16::from_le_bytes(r.take(2)?.try_into().ok()?)).ok()?;
                let stored_ms = r.u64()?;
                let fresh = Duration::from_millis(r.u64()?);
                let stale = Duration::from_millis(r.u64()?);
                let n = r.u32()?;
                let mut headers = Vec::with_capacity(n.min(256) as usize);
                for _ in 0..n {
                    let name = HeaderName::from_bytes(r.chunk()?).ok()?;
                    let value = HeaderValue::from_bytes(r.chunk()?).ok()?;
                    headers.push((name, value));
                }
                let body = Bytes::copy_from_slice(r.chunk()?);
                Kept::Answer(Arc::new(Stored {
                    status,
                    headers,
                    body,
                    stored_ms,
                    fresh,
                    stale,
                }))
            }
            KIND_VARY => {
                let until_ms = r.u64()?;
                let n = r.u32()? as usize;
                if n == 0 || n > MAX_VARY_NAMES {
                    return None;
                }
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(HeaderName::from_bytes(r.chunk()?).ok()?);
                }
                Kept::Vary(Arc::new(VaryRecord { names, until_ms }))
            }
            _ => return None,
        };
        r.0.is_empty().then_some(kept)
    }
}

const MAGIC: &[u8] = b"WFC2";
const KIND_ANSWER: u8 = 0;
const KIND_VARY: u8 = 1;

fn put_chunk(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    out.extend_from_slice(part);
}

/// A cursor over an encoded entry.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &'static str) -> Vec<(HeaderName, HeaderValue)> {
        vec![(header::CACHE_CONTROL, HeaderValue::from_static(v))]
    }

    fn fresh(max_age: Option<u64>, stale: u64) -> Option<Freshness> {
        Some(Freshness {
            max_age: max_age.map(Duration::from_secs),
            stale: Duration::from_secs(stale),
        })
    }

    #[test]
    fn cache_control_decides_what_is_kept_and_for_how_long() {
        assert_eq!(freshness(&cc("max-age=60")), fresh(Some(60), 0));
        assert_eq!(
            freshness(&cc("public, max-age=60, s-maxage=5")),
            fresh(Some(5), 0)
        );
        assert_eq!(
            freshness(&cc("max-age=1, stale-while-revalidate=30")),
            fresh(Some(1), 30)
        );
        assert_eq!(freshness(&[]), fresh(None, 0));
        for never in ["no-store", "private, max-age=60", "no-cache"] {
            assert_eq!(freshness(&cc(never)), None, "{never}");
        }
        let cookie = vec![
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            ),
            (header::SET_COOKIE, HeaderValue::from_static("a=b")),
        ];
        assert_eq!(freshness(&cookie), None);
    }

    fn sample() -> Stored {
        Stored {
            status: StatusCode::OK,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                (header::ETAG, HeaderValue::from_static("\"7\"")),
            ],
            body: Bytes::from_static(b"Hello\n"),
            stored_ms: now_ms(),
            fresh: Duration::from_secs(60),
            stale: Duration::from_secs(5),
        }
    }

    #[test]
    fn an_entry_reads_back_under_its_own_key_and_secret_only() {
        let seal = Sealer::new(b"a secret of the servers");
        let s = Kept::Answer(Arc::new(sample()));
        let bytes = seal.encode(&[1; 32], &s).unwrap();
        assert_eq!(seal.decode(&[1; 32], &bytes).as_ref(), Some(&s));
        assert_eq!(seal.decode(&[2; 32], &bytes), None, "another key");
        let planter = Sealer::new(b"anyone else");
        assert_eq!(planter.decode(&[1; 32], &bytes), None, "another secret");
        let planted = planter.encode(&[1; 32], &s).unwrap();
        assert_eq!(
            seal.decode(&[1; 32], &planted),
            None,
            "planted by another secret"
        );
        for cut in [0, 3, 10, 36, bytes.len() - 1] {
            assert_eq!(seal.decode(&[1; 32], &bytes[..cut]), None, "cut {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(seal.decode(&[1; 32], &flipped), None, "a flipped bit");
        let mut kind = bytes.clone();
        kind[36] = KIND_VARY;
        assert_eq!(seal.decode(&[1; 32], &kind), None, "another kind");
        assert_eq!(seal.decode(&[1; 32], b"garbage"), None);
        let record = Kept::Vary(Arc::new(VaryRecord {
            names: vec![HeaderName::from_static("x-user")],
            until_ms: now_ms() + 1000,
        }));
        let bytes = seal.encode(&[1; 32], &record).unwrap();
        assert_eq!(seal.decode(&[1; 32], &bytes), Some(record));
        assert_eq!(seal.encode(&[1; 32], &Kept::Pass(0)), None, "never shared");
    }

    fn vary(values: &[&'static str]) -> Vec<(HeaderName, HeaderValue)> {
        values
            .iter()
            .map(|v| (header::VARY, HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn vary_names_the_headers_that_select_an_answer() {
        let names = |v: &[&'static str]| {
            vary_names(&vary(v)).map(|n| n.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(names(&[]), Some(vec![]));
        assert_eq!(
            names(&["X-User, accept-language", "x-user"]),
            Some(vec!["accept-language".to_owned(), "x-user".to_owned()]),
            "lower case, sorted, once each, over all Vary lines"
        );
        assert_eq!(names(&["x-user, *"]), None, "Vary: * is never kept");
        assert_eq!(names(&["no spaces allowed"]), None);
        let many: String = (0..=MAX_VARY_NAMES).map(|i| format!("h{i},")).collect();
        let many = vec![(header::VARY, HeaderValue::from_str(&many).unwrap())];
        assert_eq!(vary_names(&many), None, "too many names");
    }

    #[test]
    fn each_combination_of_the_named_headers_is_a_key_of_its_own() {
        let base = [3; 32];
        let user = [HeaderName::from_static("x-user")];
        let with = |v: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append("x-user", HeaderValue::from_static(v));
            }
            h.insert("x-other", HeaderValue::from_static("1"));
            h
        };
        assert_eq!(variant_key(&base, &[], &with(&["a"])), base);
        let alice = variant_key(&base, &user, &with(&["alice"]));
        assert_ne!(alice, base);
        assert_eq!(alice, variant_key(&base, &user, &with(&["alice"])));
        assert_ne!(alice, variant_key(&base, &user, &with(&["bob"])));
        assert_ne!(alice, variant_key(&base, &user, &with(&[])), "absent");
        assert_ne!(alice, variant_key(&base, &user, &with(&["alice", "bob"])));
        assert_ne!(
            variant_key(&base, &user, &with(&["ab"])),
            variant_key(&base, &user, &with(&["a", "b"])),
            "values never run together"
        );
        assert_ne!(alice, variant_key(&[4; 32], &user, &with(&["alice"])));
    }

    #[test]
    fn a_matching_if_none_match_answers_304_without_a_body() {
        let s = sample();
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"7\""),
        );
        let r = s.response("hit", Some(&h));
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(!r.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(r.headers()[X_CACHE], "hit");
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"8\""));
        assert_eq!(s.response("hit", Some(&h)).status(), StatusCode::OK);
    }
}
