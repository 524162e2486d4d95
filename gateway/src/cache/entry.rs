//! A kept answer: what of a response is stored, how long it stays fresh (and then stale but
//! usable while it is revalidated), how it is answered again (with `Age`, and 304 for a
//! matching `If-None-Match`), and its byte form in the shared level.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
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

    /// Its byte form in the shared level: a magic, a SHA-256 over the key and the rest (so
    /// a damaged entry, or one copied under another key, is refused), then the fields.
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        let mut rest = Vec::with_capacity(self.body.len() + 256);
        rest.extend_from_slice(&self.status.as_u16().to_le_bytes());
        rest.extend_from_slice(&self.stored_ms.to_le_bytes());
        rest.extend_from_slice(&(self.fresh.as_millis() as u64).to_le_bytes());
        rest.extend_from_slice(&(self.stale.as_millis() as u64).to_le_bytes());
        rest.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (k, v) in &self.headers {
            for part in [k.as_str().as_bytes(), v.as_bytes()] {
                rest.extend_from_slice(&(part.len() as u32).to_le_bytes());
                rest.extend_from_slice(part);
            }
        }
        rest.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        rest.extend_from_slice(&self.body);
        let mut out = Vec::with_capacity(rest.len() + 36);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&seal(key, &rest));
        out.extend_from_slice(&rest);
        out
    }

    /// Reads an entry of the shared level back, refusing anything damaged or foreign.
    pub fn decode(key: &Key, bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (sum, rest) = rest.split_at_checked(32)?;
        if sum != seal(key, rest) {
            return None;
        }
        let mut r = Reader(rest);
        let status = StatusCode::from_u16(u16::from_le_bytes(r.take(2)?.try_into().ok()?)).ok()?;
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
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            status,
            headers,
            body,
            stored_ms,
            fresh,
            stale,
        })
    }
}

const MAGIC: &[u8] = b"WFC1";

fn seal(key: &Key, rest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key);
    h.update(rest);
    h.finalize().into()
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
    fn an_entry_reads_back_under_its_own_key_only() {
        let s = sample();
        let bytes = s.encode(&[1; 32]);
        assert_eq!(Stored::decode(&[1; 32], &bytes).as_ref(), Some(&s));
        assert_eq!(Stored::decode(&[2; 32], &bytes), None, "another key");
        for cut in [0, 3, 10, bytes.len() - 1] {
            assert_eq!(Stored::decode(&[1; 32], &bytes[..cut]), None, "cut {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(Stored::decode(&[1; 32], &flipped), None, "a flipped bit");
        assert_eq!(Stored::decode(&[1; 32], b"garbage"), None);
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
