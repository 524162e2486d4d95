//! `/v1/jobs`: submit, read, wait for, list and cancel asynchronous invocations.

use crate::api::auth;
use crate::api::json_int;
use crate::http::problem::ApiError;
use crate::jobs::{self, Submission};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use wafer_core::{
    FunctionName, JobFilter, JobId, JobRecord, JobStatus, KeyRecord, RequestHead, Scope, VersionRef,
};

/// The body of `POST /v1/jobs`. The input stays the JSON text it was sent as (validated, never
/// built into a tree: a 16 MiB array of numbers would take hundreds of MiB as `Value`s).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody<'a> {
    function: String,
    #[serde(default, borrow)]
    input: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    input_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "json_int::opt_u64")]
    timeout_ms: Option<u64>,
    #[serde(default)]
    webhook: Option<String>,
}

/// 404 for a job that is not there (or not the caller's).
pub(crate) fn job_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "job-not-found",
        "Job not found",
        "no such job (jobs are removed when their time to live runs out)",
    )
}

/// The caller, who may read jobs with either the Read or the Invoke scope.
async fn reader(state: &AppState, headers: &HeaderMap) -> Result<KeyRecord, ApiError> {
    let key = auth::caller(state, headers).await?.ok_or_else(|| {
        ApiError::unauthorized("an API key is required: `Authorization: Bearer <key>`")
    })?;
    if !(key.allows(Scope::Read) || key.allows(Scope::Invoke)) {
        return Err(ApiError::forbidden(
            "this key lacks the Read and Invoke scopes",
        ));
    }
    Ok(key)
}

/// A job of the caller's tenant; anyone else's, or a malformed id, is the same 404.
async fn own_job(state: &AppState, key: &KeyRecord, id: &str) -> Result<JobRecord, ApiError> {
    let id = JobId::parse(id).ok_or_else(job_not_found)?;
    state
        .jobs
        .store
        .get(&id)
        .await
        .map_err(ApiError::internal)?
        .filter(|r| r.tenant == key.tenant)
        .ok_or_else(job_not_found)
}

/// The function and version a job of `key` runs: only the tenant's own functions.
pub async fn own_target(
    state: &AppState,
    key: &KeyRecord,
    name: &FunctionName,
    vref: &VersionRef,
) -> Result<crate::resolve::Resolved, ApiError> {
    let resolved = state
        .resolver
        .resolve(state.meta.as_ref(), name, vref)
        .await?;
    match resolved {
        Some(r) if r.0.tenant == key.tenant => Ok(r),
        Some(_) => Err(ApiError::function_not_found(name.as_str())),
        None => match state.meta.get_function(name).await? {
            Some(f) if f.tenant == key.tenant => Err(wafer_core::MetaError::VersionNotFound {
                name: name.clone(),
                version: vref.to_string(),
            }
            .into()),
            _ => Err(ApiError::function_not_found(name.as_str())),
        },
    }
}

fn input_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "input-too-large",
        "Input too large",
        format!("the job's input exceeds the limit of {limit} bytes"),
    )
    .with("limit", limit)
}

/// `POST /v1/jobs`: queue an invocation; 202 with the job and its `Location`.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = auth::require(&state, req.headers(), Scope::Invoke).await?;
    let idempotency_key = idempotency_key(req.headers())?;
    let (parts, body) = req.into_parts();
    let limit = state.config.max_request_bytes;
    // Room for base64 (4/3) and JSON around the input.
    let most = limit / 3 * 4 + (64 << 10);
    // Bodies being read and stored are bounded together, by the bytes they may take.
    let _room = state
        .jobs
        .submit_room(super::content_length(&parts.headers), most)
        .await?;
    let raw = super::read_limited(&state, &parts.headers, body, most, "input-too-large")
        .await
        .map_err(|e| match e.slug {
            "input-too-large" => input_too_large(limit),
            _ => e,
        })?;
    let b: SubmitBody = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request("invalid-json", format!("invalid JSON body: {e}")))?;
    let (name, vref) = VersionRef::split(&b.function)?;
    let (input, default_type) = match (b.input, b.input_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid-input",
                "give `input` (JSON) or `input_base64`, not both",
            ));
        }
        (Some(v), None) => (v.get().as_bytes().to_vec(), "application/json"),
        (None, Some(s)) => (
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid-input",
                        format!("input_base64 is not valid base64: {e}"),
                    )
                })?,
            "application/octet-stream",
        ),
        (None, None) => (Vec::new(), "application/octet-stream"),
    };
    if input.len() > limit {
        return Err(input_too_large(limit));
    }
    let content_type = b.content_type.as_deref().unwrap_or(default_type);
    let ct = HeaderValue::from_str(content_type).map_err(|_| {
        ApiError::bad_request(
            "invalid-content-type",
            "content_type must be a valid header value",
        )
    })?;
    let resolved = own_target(&state, &key, &name, &vref).await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, ct);
    let request = request_head(&axum::http::Method::POST, "/", &headers);
    let sub = Submission {
        request,
        request_hash: jobs::submit::hash_request(&[b"submit", &raw]),
        input: input.into(),
        timeout_ms: b.timeout_ms,
        webhook: b.webhook,
        idempotency_key,
    };
    let a = state
        .jobs
        .submit(&state.admission, &key, &resolved.0, &resolved.1, sub)
        .await?;
    Ok(accepted(a))
}

/// 202 with the job and where to find it; the tenant's new webhook signing secret is shown
/// this once.
pub(crate) fn accepted(a: jobs::Accepted) -> Response {
    let rec = &a.job;
    let location = format!("/v1/jobs/{}", rec.id.as_str());
    let mut body = jobs::view::view(rec);
    if let Some(secret) = a.webhook_secret {
        body["webhook_secret"] = Value::String(secret);
    }
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if a.replayed {
        h.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// The request head a job keeps, without Wafer's credentials.
pub(crate) fn request_head(method: &Method, path: &str, headers: &HeaderMap) -> RequestHead {
    RequestHead {
        method: method.to_string(),
        path: path.to_owned(),
        headers: headers
            .iter()
            .filter(|(k, _)| !wafer_worker::call::is_credential(k))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect(),
    }
}

/// The query string, or a problem saying what is wrong with it.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))
}

/// `?wait=` of reads that may wait for a job to end.
#[derive(Deserialize)]
pub struct WaitQuery {
    wait: Option<String>,
}

/// Parses a wait such as `30s`, `1500ms`, `2m` or `30` (seconds), cut to the most allowed.
fn parse_wait(s: Option<&str>, most_s: u64) -> Result<Duration, ApiError> {
    let Some(s) = s else {
        return Ok(Duration::ZERO);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid-wait",
            format!("wait must be a duration such as 30s, 1500ms or 2m, got {s:?}"),
        )
    };
    let (digits, unit_ms) = if let Some(d) = s.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = s.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = s.strip_suffix('m') {
        (d, 60_000)
    } else {
        (s, 1000)
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let ms = digits.parse::<u64>().map_err(|_| bad())? * unit_ms;
    Ok(Duration::from_millis(ms.min(most_s * 1000)))
}

async fn waited(
    state: &AppState,
    rec: JobRecord,
    wait: Option<&str>,
) -> Result<JobRecord, ApiError> {
    let wait = parse_wait(wait, state.jobs.config().max_wait_s)?;
    if rec.status.is_terminal() || wait.is_zero() {
        return Ok(rec);
    }
    let _slot = state.jobs.start_wait(&rec.tenant)?;
    Ok(state.jobs.wait_for_end(&rec.id, wait).await?.unwrap_or(rec))
}

/// `GET /v1/jobs/{id}[?wait=30s]`: the job, once it has ended or the wait ran out.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = reader(&state, &headers).await?;
    let q = query(q)?;
    let rec = own_job(&state, &key, &id).await?;
    let rec = waited(&state, rec, q.wait.as_deref()).await?;
    Ok(Json(jobs::view::view(&rec)))
}

/// The problem a job's end is, for reads of its result.
fn problem_of(rec: &JobRecord) -> Response {
    let status = rec
        .error
        .as_ref()
        .and_then(|e| e["status"].as_u64())
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let body = rec.error.clone().unwrap_or_else(|| json!({}));
    let mut resp = (status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

fn status_header(status: JobStatus) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("x-wafer-job-status"),
        HeaderValue::from_static(status.as_str()),
    )
}

/// `GET /v1/jobs/{id}/result[?wait=30s]`: what the job returned, as the function returned it
/// (status, headers, body); the job's problem when it failed; 409 while it has not ended.
pub async fn result(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = reader(&state, &headers).await?;
    let q = query(q)?;
    let rec = own_job(&state, &key, &id).await?;
    let rec = waited(&state, rec, q.wait.as_deref()).await?;
    let (name, value) = status_header(rec.status);
    let mut resp = match (rec.status, &rec.result) {
        (JobStatus::Succeeded, Some(res)) => {
            let body = state
                .jobs
                .store
                .output(&rec.id)
                .await
                .map_err(ApiError::internal)?
                .unwrap_or_default();
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(res.status).unwrap_or(StatusCode::OK);
            for (k, v) in &res.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    resp.headers_mut().append(k, v);
                }
            }
            resp
        }
        (JobStatus::Queued | JobStatus::Running, _) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "job-not-finished",
                "Job not finished",
                format!(
                    "the job is {}; wait with ?wait=30s or poll GET /v1/jobs/{}",
                    rec.status.as_str(),
                    rec.id.as_str()
                ),
            )
            .with("job_status", rec.status.as_str());
            e.retry_after = Some(1);
            e.into_response()
        }
        _ => problem_of(&rec),
    };
    resp.headers_mut().insert(name, value);
    Ok(resp)
}

/// `GET /v1/jobs/{id}/logs`: what the job wrote to stderr (its tail).
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = reader(&state, &headers).await?;
    let rec = own_job(&state, &key, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        rec.stderr,
    )
        .into_response())
}

/// `DELETE /v1/jobs/{id}`: cancel a queued or running job (a running guest is interrupted);
/// 409 when it has already ended.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = auth::require(&state, &headers, Scope::Invoke).await?;
    let rec = own_job(&state, &key, &id).await?;
    match state.jobs.cancel(&rec.id).await? {
        Some((rec, true)) => Ok(Json(jobs::view::view(&rec))),
        Some((rec, false)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job-ended",
            "Job already ended",
            format!("the job has already ended ({})", rec.status.as_str()),
        )
        .with("job_status", rec.status.as_str())),
        None => Err(job_not_found()),
    }
}

/// `GET /v1/jobs` query.
#[derive(Deserialize)]
pub struct ListQuery {
    function: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/jobs?function=&status=&limit=&cursor=`: the tenant's jobs, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = reader(&state, &headers).await?;
    let q = query(q)?;
    let function = q.function.as_deref().map(FunctionName::new).transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-status",
                    format!(
                        "status must be queued, running, succeeded, failed, cancelled or dead, \
                         got {s:?}"
                    ),
                )
            })
        })
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid-limit", "limit must be between 1 and 100")
            })?,
    };
    if q.cursor
        .as_deref()
        .is_some_and(|c| !wafer_core::jobs::is_cursor(c))
    {
        return Err(ApiError::bad_request(
            "invalid-cursor",
            "cursor must be a next_cursor of an earlier page",
        ));
    }
    let page = state
        .jobs
        .store
        .list(
            &key.tenant,
            &JobFilter { function, status },
            q.cursor.as_deref(),
            limit,
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "jobs": page.jobs.iter().map(jobs::view::view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

/// `GET /v1/jobs/{id}/events`: a Server-Sent Events stream of the job's status, one `status`
/// event per change (the current state first), ending after the job ends.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = reader(&state, &headers).await?;
    let rec = own_job(&state, &key, &id).await?;
    // The stream holds a wait for as long as it is open.
    let slot = std::sync::Arc::new(state.jobs.start_wait(&rec.tenant)?);
    let watch = state.jobs.watch(&rec.id);
    let stream = futures::stream::unfold(
        (state, rec.id, watch, None::<JobStatus>, false),
        move |(state, id, mut rx, last, done)| {
            let _slot = slot.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let rec = match state.jobs.store.get(&id).await {
                        Ok(Some(r)) => r,
                        _ => return None,
                    };
                    if last != Some(rec.status) {
                        let event = Event::default()
                            .event("status")
                            .json_data(jobs::view::view(&rec))
                            .unwrap_or_default();
                        let status = rec.status;
                        let ended = status.is_terminal();
                        return Some((
                            Ok::<_, Infallible>(event),
                            (state, id, rx, Some(status), ended),
                        ));
                    }
                    // An hour with no change ends the stream; clients reconnect.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
                    if !rx.next_change(deadline).await {
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `POST /v1/webhooks/secret`: a new webhook signing secret for the caller's tenant (scope
/// deploy), shown this once; deliveries from now on are signed with it.
pub async fn rotate_webhook_secret(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = auth::require(&state, &headers, Scope::Deploy).await?;
    let (secret, _) = state
        .jobs
        .store
        .webhook_secret(&key.tenant, true)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "webhook_secret": secret })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_with_units_and_are_cut_to_the_most() {
        let w = |s| parse_wait(Some(s), 60);
        assert_eq!(w("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(w("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(w("2").unwrap(), Duration::from_secs(2));
        assert_eq!(w("5m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_wait(None, 60).unwrap(), Duration::ZERO);
        for bad in ["", "s", "-1s", "1.5s", "1h", "9999999999s"] {
            assert!(w(bad).is_err(), "{bad}");
        }
    }
}
