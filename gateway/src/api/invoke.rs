//! `ANY /fn/{name}[@version|@alias]/{path…}`: synchronous invocation.

use crate::api::auth;
use crate::execute;
use crate::http::problem::ApiError;
use crate::resolve::Resolved;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use wafer_core::{FunctionName, KeyRecord, Scope, VersionRef};
use wafer_runner::Output;
use wafer_worker::Call;

/// Splits `/fn/<target>/<rest>?q` into the target and the path (with query) the function sees.
fn split_path(uri: &Uri) -> (&str, String) {
    let path = uri.path().strip_prefix("/fn/").unwrap_or("");
    let (target, rest) = match path.find('/') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, "/"),
    };
    let rest = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    (target, rest)
}

/// The methods a function can be invoked with (the `Allow` header of a refusal lists them).
const INVOKE_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

/// The function and version a caller may invoke. Whoever is not the owner gets the same 404
/// for a function that is missing, private, or lacks the version or alias asked for, so
/// nothing about another tenant's functions can be learnt by probing.
async fn authorize_invocation(
    state: &AppState,
    caller: Option<&KeyRecord>,
    name: &FunctionName,
    vref: &VersionRef,
) -> Result<Resolved, ApiError> {
    let hidden = || ApiError::function_not_found(name.as_str());
    let resolved = state
        .resolver
        .resolve(state.meta.as_ref(), name, vref)
        .await?;
    let owner = match &resolved {
        Some(r) => Some(r.0.tenant.clone()),
        None => state.meta.get_function(name).await?.map(|f| f.tenant),
    };
    let own = caller.filter(|k| owner.as_ref() == Some(&k.tenant));
    let Some(resolved) = resolved else {
        return Err(match (own, owner) {
            (Some(_), Some(_)) => wafer_core::MetaError::VersionNotFound {
                name: name.clone(),
                version: vref.to_string(),
            }
            .into(),
            _ => hidden(),
        });
    };
    if !resolved.1.spec.public {
        match own {
            None => return Err(hidden()),
            Some(k) if !k.allows(Scope::Invoke) => {
                return Err(ApiError::forbidden("this key lacks the Invoke scope"));
            }
            Some(_) => {}
        }
    }
    Ok(resolved)
}

/// The caller and target of an invocation once authorised. The cache layer leaves it in
/// the request's extensions, so the handler does not authorise the same request twice.
#[derive(Clone)]
pub struct Authorized {
    caller: Option<KeyRecord>,
    resolved: Resolved,
    name: FunctionName,
}

impl Authorized {
    /// Whether the caller may see what the function printed (its owner, with Read).
    fn sees_logs(&self) -> bool {
        self.caller
            .as_ref()
            .is_some_and(|k| k.tenant == self.resolved.0.tenant && k.allows(Scope::Read))
    }
}

/// Finds the caller of a request for `target` (`name[@version|@alias]`, as it appears in the
/// path, percent-encoded or not) and checks they may invoke it.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    target: &str,
) -> Result<Authorized, ApiError> {
    // Clients encode the segment (`hello%40stable` from `encodeURIComponent`).
    let target = percent_encoding::percent_decode_str(target)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid-name", "the function name is not UTF-8"))?;
    let (name, vref) = VersionRef::split(&target)?;
    let caller = auth::invoker(state, headers).await?;
    let resolved = authorize_invocation(state, caller.as_ref(), &name, &vref).await?;
    Ok(Authorized {
        caller,
        resolved,
        name,
    })
}

/// Whether a call becomes a job instead of running now: the caller asked for it
/// (`Prefer: respond-async`), or the owner calls a version whose runs outlast the inline
/// budget without `Prefer: wait`.
fn goes_async(state: &AppState, a: &Authorized, headers: &HeaderMap) -> Option<bool> {
    if prefers(headers, "respond-async") {
        return Some(true);
    }
    let (function, version) = (&a.resolved.0, &a.resolved.1);
    let owner_calls = a
        .caller
        .as_ref()
        .is_some_and(|k| k.tenant == function.tenant && k.allows(Scope::Invoke));
    let long = owner_calls
        && !prefers(headers, "wait")
        && state
            .jobs
            .estimates
            .p95(&crate::jobs::submit::estimate_key(
                function,
                version.version,
            ))
            .is_some_and(|(p95, _)| p95 > state.jobs.config().inline_budget_ms);
    long.then_some(false)
}

/// Runs a function and returns its response.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    mut req: Request,
) -> Result<Response, ApiError> {
    if !INVOKE_METHODS.contains(req.method()) {
        // TRACE would echo the caller's headers back through the function, CONNECT is a
        // proxy's, and extension methods are not in the API document.
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("functions cannot be invoked with {}", req.method()),
        )
        .into_response();
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return Ok(resp);
    }
    let (target, fn_path) = split_path(req.uri());
    let target = target.to_owned();
    let a = match req.extensions_mut().remove::<Authorized>() {
        Some(a) => a,
        None => authorize(&state, req.headers(), &target).await?,
    };
    let sees_logs = a.sees_logs();

    // The body arrives before any slot is taken: a slow client holds a connection, never
    // an invocation slot or memory budget.
    let (parts, body) = req.into_parts();
    let body = super::read_limited(
        &state,
        &parts.headers,
        body,
        state.config.max_request_bytes,
        "request-too-large",
    )
    .await?;
    if let Some(asked) = goes_async(&state, &a, &parts.headers) {
        return submit_async(
            &state,
            a.caller.as_ref(),
            &a.resolved,
            parts,
            fn_path,
            body,
            asked,
        )
        .await;
    }
    let (function, version) = (&a.resolved.0, &a.resolved.1);
    let estimate_key = crate::jobs::submit::estimate_key(function, version.version);
    run_call(
        &state,
        function,
        version,
        &a.name,
        parts,
        fn_path,
        body,
        sees_logs,
        estimate_key,
    )
    .await
}

/// Scopes for the cache layer in front of the invoke handler: the same authorisation as
/// the handler's, done once (the handler finds it in the request).
pub struct InvokeScopes {
    state: Arc<AppState>,
}

impl InvokeScopes {
    /// Scopes found on `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The scope of a call of `target` with `headers`, authorised as an invocation would be;
/// None when the call would become a job.
pub async fn scope_of(
    state: &AppState,
    headers: &HeaderMap,
    target: &str,
) -> Result<(Option<crate::cache::Scope>, Authorized), ApiError> {
    let a = authorize(state, headers, target).await?;
    if goes_async(state, &a, headers).is_some() {
        return Ok((None, a));
    }
    let scope = state
        .cache
        .scope(
            (&a.resolved.0, &a.resolved.1, &a.resolved.2),
            a.caller.as_ref().map(|k| &k.tenant),
            a.sees_logs(),
        )
        .await;
    Ok((Some(scope), a))
}

#[async_trait::async_trait]
impl crate::cache::ScopeSource for InvokeScopes {
    async fn scope(&self, parts: &mut Parts) -> Option<crate::cache::Scope> {
        let (target, _) = split_path(&parts.uri);
        let (scope, a) = scope_of(&self.state, &parts.headers, target).await.ok()?;
        parts.extensions.insert(a);
        scope
    }

    async fn read_body(&self, parts: &Parts, body: Body) -> Result<bytes::Bytes, Response> {
        super::read_limited(
            &self.state,
            &parts.headers,
            body,
            self.state.config.max_request_bytes,
            "request-too-large",
        )
        .await
        .map_err(IntoResponse::into_response)
    }
}

/// Runs the function on the call (the caller is authorised and the body read) and builds
/// the response.
#[allow(clippy::too_many_arguments)]
async fn run_call(
    state: &Arc<AppState>,
    function: &wafer_core::FunctionRecord,
    version: &wafer_core::VersionRecord,
    name: &FunctionName,
    parts: axum::http::request::Parts,
    fn_path: String,
    body: bytes::Bytes,
    sees_logs: bool,
    estimate_key: crate::jobs::lanes::VersionKey,
) -> Result<Response, ApiError> {
    let state = state.clone();
    let _admitted = state
        .admission
        .admit(&function.tenant, version.spec.memory_mb)?;
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!(
        "invocation",
        tenant = %function.tenant,
        function = %name,
        version = version.version,
        request_id = %request_id,
    );

    let started = Instant::now();
    let call = Call {
        method: parts.method,
        path: fn_path,
        headers: parts.headers,
        body,
    };
    let limits = execute::limits_of(&state, version, None);
    let result = execute::run(&state, function, version, call, limits, &span).await;
    if !matches!(
        result,
        Err(wafer_runner::InvokeError::Capacity
            | wafer_runner::InvokeError::Internal(_)
            | wafer_runner::InvokeError::Artifact(_))
    ) {
        state
            .jobs
            .estimates
            .record(estimate_key, started.elapsed().as_millis() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let version_header = (
        HeaderName::from_static("x-wafer-version"),
        HeaderValue::from(version.version),
    );
    match result {
        Ok((outcome, cold)) => {
            state
                .metrics
                .record(name.as_str(), "ok", seconds, outcome.fuel, cold);
            if !outcome.log.is_empty() {
                execute::keep_log(
                    &state,
                    function,
                    version,
                    &request_id,
                    "ok",
                    started,
                    &outcome.log,
                );
            }
            let mut resp = match outcome.output {
                Output::Http(mut r) => {
                    // The body is buffered: framing is ours to set, not the guest's.
                    r.headers_mut().remove(header::CONTENT_LENGTH);
                    r.headers_mut().remove(header::TRANSFER_ENCODING);
                    r.map(Body::from).into_response()
                }
                Output::Stdout(bytes) => {
                    let ct = wafer_worker::end::content_type_of(&bytes);
                    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response()
                }
            };
            resp.headers_mut()
                .insert(version_header.0, version_header.1);
            Ok(resp)
        }
        Err(mut e) => {
            let log = match sees_logs {
                true => e.stderr().to_owned(),
                false => e.take_stderr(),
            };
            let err: ApiError = e.into();
            state
                .metrics
                .record(name.as_str(), err.slug, seconds, 0, false);
            execute::keep_log(
                &state,
                function,
                version,
                &request_id,
                err.slug,
                started,
                log.as_bytes(),
            );
            tracing::info!(parent: &span, outcome = err.slug, detail = %err.detail, "invocation failed");
            let mut resp = err.into_response();
            resp.headers_mut()
                .insert(version_header.0, version_header.1);
            Ok(resp)
        }
    }
}

/// Whether the `Prefer` headers (RFC 7240) ask for `token`.
fn prefers(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            // `wait=10` is the preference `wait` with a value (RFC 7240).
            p.split([';', '='])
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case(token))
        })
}

/// `Prefer: respond-async` (`asked`), or a call whose runs outlast the inline budget: the
/// call becomes a job of the caller (who must own the function and hold the Invoke scope);
/// 202 with its `Location`.
async fn submit_async(
    state: &AppState,
    caller: Option<&KeyRecord>,
    resolved: &Resolved,
    parts: axum::http::request::Parts,
    fn_path: String,
    body: bytes::Bytes,
    asked: bool,
) -> Result<Response, ApiError> {
    let (function, version) = (&resolved.0, &resolved.1);
    let key = caller.ok_or_else(|| {
        ApiError::unauthorized(
            "an asynchronous call (Prefer: respond-async) needs an API key: \
             `Authorization: Bearer <key>`",
        )
    })?;
    if key.tenant != function.tenant {
        return Err(ApiError::function_not_found(function.name.as_str()));
    }
    if !key.allows(Scope::Invoke) {
        return Err(ApiError::forbidden("this key lacks the Invoke scope"));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let sub = crate::jobs::Submission {
        request: super::jobs::request_head(&parts.method, &fn_path, &parts.headers),
        // The function is part of the request: the same key on another function (or on a
        // function deleted and created again) is another request, refused, never a replay.
        request_hash: crate::jobs::submit::hash_request(&[
            b"call",
            function.name.as_str().as_bytes(),
            &function.incarnation.to_le_bytes(),
            parts.method.as_str().as_bytes(),
            fn_path.as_bytes(),
            content_type,
            &body,
        ]),
        idempotency_key: super::jobs::idempotency_key(&parts.headers)?,
        input: body,
        timeout_ms: None,
        webhook: None,
    };
    let accepted = state
        .jobs
        .submit(&state.admission, key, function, version, sub)
        .await?;
    let mut resp = super::jobs::accepted(accepted);
    if asked {
        resp.headers_mut().insert(
            HeaderName::from_static("preference-applied"),
            HeaderValue::from_static("respond-async"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_tokens_are_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("prefer", HeaderValue::from_static("wait=10"));
        assert!(!prefers(&h, "respond-async"));
        assert!(prefers(&h, "wait"));
        h.append(
            "prefer",
            HeaderValue::from_static("handling=lenient, Respond-Async"),
        );
        assert!(prefers(&h, "respond-async"));
        assert!(!prefers(&h, "respond"));
    }

    #[test]
    fn paths_split_into_target_and_function_path() {
        let u: Uri = "/fn/hello@2/a/b?x=1".parse().unwrap();
        assert_eq!(split_path(&u), ("hello@2", "/a/b?x=1".to_string()));
        let u: Uri = "/fn/hello".parse().unwrap();
        assert_eq!(split_path(&u), ("hello", "/".to_string()));
        let u: Uri = "/fn/hello?name=x".parse().unwrap();
        assert_eq!(split_path(&u), ("hello", "/?name=x".to_string()));
    }
}
