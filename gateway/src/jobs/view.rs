//! The API's view of a job (`GET /v1/jobs/{id}`, the event stream, webhooks).

use serde_json::{Value, json};
use wafer_core::{JobRecord, WebhookState};

/// The API's view of a job.
pub fn view(r: &JobRecord) -> Value {
    let since = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let content_type = r.result.as_ref().and_then(|res| {
        res.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
    });
    json!({
        "id": r.id.as_str(),
        "function": r.function.as_str(),
        "version": r.version,
        "status": r.status.as_str(),
        "attempts": r.attempts,
        "route": r.route.as_str(),
        "lane": r.lane,
        "route_reason": r.reason,
        "timeout_ms": r.timeout_ms,
        "input_bytes": r.input_bytes,
        "timings": {
            "queued_at_ms": r.created_ms,
            "started_at_ms": r.started_ms,
            "finished_at_ms": r.finished_ms,
            "wait_ms": since(Some(r.created_ms), r.started_ms),
            "run_ms": since(r.started_ms, r.finished_ms),
        },
        "result": r.result.as_ref().map(|res| json!({
            "status": res.status,
            "content_type": content_type,
            "bytes": res.bytes,
            "url": format!("/v1/jobs/{}/result", r.id.as_str()),
        })),
        "error": r.error,
        "runner": r.runner,
        "expires_at_ms": r.expires_ms,
        "webhook": r.webhook_state.as_ref().map(webhook),
    })
}

/// The webhook state as the API shows it.
pub fn webhook(state: &WebhookState) -> Value {
    json!({
        "status": state.status,
        "attempts": state.attempts,
        "last_error": state.last_error,
    })
}
