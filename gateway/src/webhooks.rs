//! Webhooks: when a job with a `webhook` ends, its record (as `GET /v1/jobs/{id}` shows it)
//! is POSTed there, signed with the tenant's secret:
//! `Wafer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. A receiver
//! recomputes the HMAC over the timestamp and the raw body and rejects old timestamps, so a
//! captured delivery cannot be replayed later.
//!
//! Failed attempts (no connection, timeout, non-2xx) are retried with exponential backoff
//! and jitter, up to `jobs.webhook_attempts`; then the delivery is recorded as failed. The
//! job itself is unaffected either way. Deliveries still pending when the server stops are
//! resumed at the next start. Addresses that resolve to loopback, private or link-local
//! networks are refused unless `jobs.webhook_allow_private` is set, so a webhook cannot be
//! used to reach the server's own network.

use crate::config::JobsConfig;
use crate::problem::ApiError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use wafer_core::{JobId, JobStore, WebhookState};

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
pub fn validate(url: &str) -> Result<reqwest::Url, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
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

/// Whether an address is one a webhook may not reach by default.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // Carrier-grade NAT, 100.64.0.0/10.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves the URL's host to the address to connect to, refusing private ones unless
/// allowed. Pinning the address keeps a second resolution from pointing elsewhere.
async fn target(url: &reqwest::Url, allow_private: bool) -> Result<(String, SocketAddr), String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().ok_or("no port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    if !allow_private && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(format!(
            "{host} resolves to a loopback, private or link-local address, which webhooks may \
             not reach (jobs.webhook_allow_private)"
        ));
    }
    Ok((host, first))
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
    config: &JobsConfig,
    url: &reqwest::Url,
    secret: &str,
    id: &JobId,
    attempt_no: u32,
    body: &[u8],
) -> Result<(), Failure> {
    let (host, addr) = target(url, config.webhook_allow_private)
        .await
        .map_err(|message| Failure {
            permanent: message.contains("may not reach"),
            message,
        })?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.webhook_timeout_ms.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .resolve(host.trim_start_matches('[').trim_end_matches(']'), addr)
        .build()
        .map_err(|e| e.to_string())?;
    let timestamp = wafer_core::now_unix();
    let resp = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("user-agent", "wafer-webhooks")
        .header("wafer-signature", signature(secret, timestamp, body))
        .header("wafer-job-id", id.as_str())
        .header("wafer-delivery-attempt", attempt_no.to_string())
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {}", resp.status()).into())
    }
}

/// Delivers the webhook of ended job `id`, retrying, and records how it went.
pub async fn deliver(store: Arc<dyn JobStore>, config: JobsConfig, id: JobId) {
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
    let secret = match store.webhook_secret(&rec.tenant, false).await {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::warn!(job = id.as_str(), error = %e, "no webhook secret");
            return;
        }
    };
    let body = serde_json::to_vec(&crate::jobs::view(&rec)).expect("views serialize");
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
        match attempt(&config, &url, &secret, &id, state.attempts, &body).await {
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

/// The webhook state as the API shows it.
pub fn view(state: &WebhookState) -> serde_json::Value {
    serde_json::json!({
        "status": state.status,
        "attempts": state.attempts,
        "last_error": state.last_error,
    })
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
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
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
