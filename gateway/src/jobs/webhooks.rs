//! Webhooks: when a job with a `webhook` ends, its record (as `GET /v1/jobs/{id}` shows it)
//! is POSTed there, signed with the tenant's secret:
//! `Wafer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. A receiver
//! recomputes the HMAC over the timestamp and the raw body and rejects old timestamps, so a
//! captured delivery cannot be replayed later.
//!
//! Failed attempts (no connection, timeout, non-2xx) are retried with exponential backoff
//! and jitter, up to `jobs.webhook_attempts`; then the delivery is recorded as failed. The
//! job itself is unaffected either way. Deliveries still pending when the server stops are
//! resumed at the next start. Addresses that are not globally routable (loopback, private,
//! link-local, and the other special-purpose ranges, including the IPv6 forms that carry an
//! IPv4 address: NAT64, 6to4, Teredo, IPv4-compatible) are refused unless
//! `jobs.webhook_allow_private` is set, so a webhook cannot be used to reach the server's own
//! network.
//!
//! One client serves every delivery ([`Webhooks`]): its resolver refuses those addresses at
//! connection time too (the address checked is the address connected to), it never takes a
//! proxy from the environment (only `jobs.webhook_proxy`), and a semaphore bounds the attempts
//! in flight (`jobs.webhook_max_in_flight`).

use crate::config::JobsConfig;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wafer_core::Problem;
use wafer_core::{JobId, JobStore};

/// The longest webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// The signature header value of `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Checks a webhook URL given at submission: http or https, with a host, not too long.
pub fn validate(url: &str) -> Result<reqwest::Url, Problem> {
    let bad = |why: &str| {
        Problem::bad_request(
            "invalid-webhook",
            format!("webhook must be an http(s) URL with a host: {why}"),
        )
    };
    if url.len() > MAX_URL_BYTES {
        return Err(bad("longer than 2048 bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme is neither http nor https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("credentials in the URL are not accepted"));
    }
    Ok(parsed)
}

/// Whether an IPv4 address is one a webhook may not reach by default: anything but global
/// unicast (IANA's special-purpose registry).
fn is_special_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0 // "this network", 0.0.0.0/8
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT), 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 192 && b == 0 && c == 2) // documentation, 192.0.2.0/24
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast, 192.88.99.0/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || (a == 198 && b == 51 && c == 100) // documentation, 198.51.100.0/24
        || (a == 203 && b == 0 && c == 113) // documentation, 203.0.113.0/24
        || a >= 240 // reserved, 240.0.0.0/4
}

/// Whether an IPv6 address is one a webhook may not reach by default: anything but global
/// unicast, and every form that carries an IPv4 address (whose IPv4 side is out of reach of
/// this check, so it is refused whole).
fn is_special_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_special_v4(v4);
    }
    let s = v6.segments();
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || s[..6] == [0; 6] // IPv4-compatible ::a.b.c.d (deprecated), ::/96
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64, 64:ff9b::/96 and 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0; 3]) // discard-only, 100::/64
        || (s[0] == 0x2001 && s[1] < 0x200) // IETF protocol assignments (Teredo…), 2001::/23
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation, 2001:db8::/32
        || s[0] == 0x2002 // 6to4, 2002::/16
        || (s[0] & 0xfff0) == 0x3ff0 // documentation, 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
}

/// Whether an address is one a webhook may not reach by default.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

/// What a refused address says, in the error and the job's webhook state.
const REFUSED: &str = "resolves to a loopback, private, link-local or other special-purpose \
                       address, which webhooks may not reach (jobs.webhook_allow_private)";

/// The shared client's resolver: the system's, with the addresses webhooks may not reach
/// refused, so the address connected to is one that was checked.
struct Guarded;

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| is_private(a.ip())) {
                let e = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} {REFUSED}"),
                );
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Webhook delivery: one client for all of them, and the bound on attempts in flight.
pub struct Webhooks {
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
    config: JobsConfig,
}

impl Webhooks {
    /// The deliverer for `config`; fails on a `webhook_proxy` that is not a URL.
    pub fn new(config: &JobsConfig) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.webhook_timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("wafer-webhooks")
            .no_proxy();
        if config.webhook_proxy.is_empty() {
            if !config.webhook_allow_private {
                builder = builder.dns_resolver(Arc::new(Guarded));
            }
        } else {
            // The proxy resolves the target itself; the check before each attempt holds.
            let proxy = reqwest::Proxy::all(config.webhook_proxy.as_str())
                .map_err(|e| format!("jobs.webhook_proxy: {e}"))?;
            builder = builder.proxy(proxy);
        }
        Ok(Self {
            client: builder
                .build()
                .map_err(|e| format!("webhook client: {e}"))?,
            in_flight: Arc::new(Semaphore::new(config.webhook_max_in_flight.max(1))),
            config: config.clone(),
        })
    }
}

/// Checks the URL's host before any connection, refusing addresses webhooks may not reach
/// unless allowed: a permanent failure with a clear reason. An address in the URL is checked
/// here, as no resolver sees it; a name is resolved here only when a proxy connects (without
/// one the shared client's resolver checks each address it hands out, and a second lookup
/// would be wasted).
async fn target(url: &reqwest::Url, allow_private: bool, proxied: bool) -> Result<String, String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().ok_or("no port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) if !proxied => return Ok(host),
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !allow_private && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(format!("{host} {REFUSED}"));
    }
    Ok(host)
}

/// The delay before attempt `n + 1` (after `n` failures): exponential, capped at five
/// minutes, with ±50 % jitter so many failed deliveries do not retry in step.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(300));
    capped.mul_f64(0.5 + rand::random::<f64>())
}

/// Why an attempt failed, and whether trying again could help.
struct Failure {
    message: String,
    permanent: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }
}

/// One attempt: Ok on a 2xx answer.
async fn attempt(
    hooks: &Webhooks,
    url: &reqwest::Url,
    secret: &str,
    id: &JobId,
    attempt_no: u32,
    body: &[u8],
) -> Result<(), Failure> {
    let proxied = !hooks.config.webhook_proxy.is_empty();
    target(url, hooks.config.webhook_allow_private, proxied)
        .await
        .map_err(|message| Failure {
            permanent: message.contains(REFUSED),
            message,
        })?;
    let _turn = hooks.in_flight.acquire().await.map_err(|e| e.to_string())?;
    let timestamp = wafer_core::now_unix();
    let resp = hooks
        .client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("wafer-signature", signature(secret, timestamp, body))
        .header("wafer-job-id", id.as_str())
        .header("wafer-delivery-attempt", attempt_no.to_string())
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| {
            // The resolver's refusal (an address that changed since the check) is for good.
            let message = format!("{e:?}");
            Failure {
                permanent: message.contains(REFUSED),
                message: if message.contains(REFUSED) {
                    format!("{} {REFUSED}", url.host_str().unwrap_or_default())
                } else {
                    e.to_string()
                },
            }
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {}", resp.status()).into())
    }
}

/// Delivers the webhook of ended job `id`, retrying, and records how it went.
pub async fn deliver(hooks: Arc<Webhooks>, store: Arc<dyn JobStore>, id: JobId) {
    let Ok(Some(rec)) = store.get(&id).await else {
        return;
    };
    let (Some(url), Some(mut state)) = (rec.webhook.clone(), rec.webhook_state.clone()) else {
        return;
    };
    if state.status != "pending" {
        return;
    }
    let url = match validate(&url) {
        Ok(u) => u,
        Err(e) => {
            state.status = "failed".into();
            state.last_error = Some(e.detail);
            let _ = store.set_webhook_state(&id, state).await;
            return;
        }
    };
    let secret = match store.existing_webhook_secret(&rec.tenant).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            state.status = "failed".into();
            state.last_error = Some("the tenant has no webhook signing secret".into());
            let _ = store.set_webhook_state(&id, state).await;
            return;
        }
        Err(e) => {
            tracing::warn!(job = id.as_str(), error = %e, "no webhook secret");
            return;
        }
    };
    let config = &hooks.config;
    let body = serde_json::to_vec(&crate::jobs::view::view(&rec)).expect("views serialize");
    let most = config.webhook_attempts.max(1);
    while state.attempts < most {
        if state.attempts > 0 {
            tokio::time::sleep(backoff(
                Duration::from_millis(config.webhook_backoff_ms),
                state.attempts,
            ))
            .await;
        }
        state.attempts += 1;
        match attempt(&hooks, &url, &secret, &id, state.attempts, &body).await {
            Ok(()) => {
                state.status = "delivered".into();
                state.last_error = None;
                break;
            }
            Err(f) => {
                tracing::info!(job = id.as_str(), attempt = state.attempts, error = %f.message, "webhook attempt failed");
                state.last_error = Some(f.message);
                if state.attempts >= most || f.permanent {
                    state.status = "failed".into();
                    break;
                }
            }
        }
        if let Err(e) = store.set_webhook_state(&id, state.clone()).await {
            tracing::warn!(job = id.as_str(), error = %e, "recording a webhook attempt failed");
        }
    }
    let _ = store.set_webhook_state(&id, state).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body() {
        let a = signature("whsec_x", 1700000000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="), "{a}");
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, signature("whsec_x", 1700000001, b"{}"));
        assert_ne!(a, signature("whsec_x", 1700000000, b"{ }"));
        assert_ne!(a, signature("whsec_y", 1700000000, b"{}"));
        assert_eq!(a, signature("whsec_x", 1700000000, b"{}"));
    }

    #[test]
    fn urls_are_checked_and_private_addresses_recognised() {
        assert!(validate("https://hooks.example.com/x?y=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert!(validate(&format!("https://e.com/{}", "a".repeat(2100))).is_err());
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "fec0::1",
            "::7f00:1",                             // IPv4-compatible ::127.0.0.1
            "::a00:1",                              // IPv4-compatible ::10.0.0.1
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b:1::a00:1",                     // local-use NAT64
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "ff02::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "2a00:1450::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let b1 = backoff(base, 1);
        assert!(b1 >= Duration::from_millis(50) && b1 < Duration::from_millis(150));
        let b4 = backoff(base, 4);
        assert!(b4 >= Duration::from_millis(400) && b4 < Duration::from_millis(1200));
        assert!(backoff(base, 40) <= Duration::from_secs(450));
    }
}
