//! `ANY /fn/{name}[@version|@alias]/{path…}`: synchronous invocation.

use crate::auth;
use crate::problem::ApiError;
use crate::resolve::Resolved;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wafer_core::{Abi, FunctionName, KeyRecord, Scope, VersionRecord, VersionRef};
use wafer_runner::{Input, Invocation, Limits, Output};

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

/// The limits of one invocation of `v`.
fn limits_of(state: &AppState, v: &VersionRecord) -> Limits {
    let d = &state.config.functions;
    Limits {
        timeout: Duration::from_millis(v.spec.timeout_ms),
        fuel: v.spec.fuel,
        memory_bytes: (v.spec.memory_mb as usize) << 20,
        table_elements: wafer_runner::limits::MAX_TABLE_ELEMENTS,
        stdout_bytes: d.max_stdout_bytes,
        stderr_bytes: d.max_log_bytes,
        response_bytes: d.max_response_bytes,
    }
}

/// Response body type of command output: JSON when it parses as JSON.
fn content_type_of(stdout: &[u8]) -> &'static str {
    let first = stdout.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{') | Some(b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(stdout).is_ok()
    {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

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

/// Runs a function and returns its response.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    req: Request,
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
    // Clients encode the segment (`hello%40stable` from `encodeURIComponent`).
    let target = percent_encoding::percent_decode_str(target)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid-name", "the function name is not UTF-8"))?;
    let (name, vref) = VersionRef::split(&target)?;
    let caller = auth::invoker(&state, req.headers()).await?;
    let resolved = authorize_invocation(&state, caller.as_ref(), &name, &vref).await?;
    let (function, version) = (&resolved.0, &resolved.1);
    // Only the owner, with the read scope, sees what the function printed.
    let sees_logs = caller
        .as_ref()
        .is_some_and(|k| k.tenant == function.tenant && k.allows(Scope::Read));

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
    let mut env: Vec<(String, String)> = version
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let input = match version.spec.abi {
        Abi::Http => {
            let mut builder = axum::http::Request::builder()
                .method(parts.method.clone())
                .uri(fn_path.as_str());
            for (k, v) in &parts.headers {
                // Credentials sent to Wafer are not the function's business.
                if k == header::AUTHORIZATION || k == header::PROXY_AUTHORIZATION {
                    continue;
                }
                builder = builder.header(k, v);
            }
            if !parts.headers.contains_key(header::HOST) {
                builder = builder.header(header::HOST, "localhost");
            }
            Input::Http(Box::new(builder.body(body).map_err(ApiError::internal)?))
        }
        Abi::Command => {
            env.push(("WAFER_METHOD".into(), parts.method.to_string()));
            env.push(("WAFER_PATH".into(), fn_path.clone()));
            Input::Stdin(body)
        }
    };
    let result = async {
        let (prepared, cold) = state.runner.prepare(&version.spec.module).await?;
        let inv = Invocation {
            limits: limits_of(&state, version),
            args: vec![name.to_string()],
            env,
            input,
        };
        state.runner.invoke(prepared, inv).await.map(|o| (o, cold))
    }
    .instrument(span.clone())
    .await;
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
                keep_log(
                    &state,
                    function,
                    version,
                    &request_id,
                    "ok",
                    seconds,
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
                    let ct = content_type_of(&bytes);
                    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response()
                }
            };
            resp.headers_mut()
                .insert(version_header.0, version_header.1);
            Ok(resp)
        }
        Err(mut e) => {
            let log = match &mut e {
                wafer_runner::InvokeError::Exit { stderr, .. } if sees_logs => stderr.clone(),
                wafer_runner::InvokeError::Exit { stderr, .. } => std::mem::take(stderr),
                _ => String::new(),
            };
            let err: ApiError = e.into();
            state
                .metrics
                .record(name.as_str(), err.slug, seconds, 0, false);
            keep_log(
                &state,
                function,
                version,
                &request_id,
                err.slug,
                seconds,
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

/// Keeps the tail of an invocation's log for `GET /v1/functions/{name}/logs`.
fn keep_log(
    state: &AppState,
    function: &wafer_core::FunctionRecord,
    version: &VersionRecord,
    request_id: &str,
    outcome: &str,
    seconds: f64,
    log: &[u8],
) {
    state.logs.push(
        function.name.as_str(),
        function.incarnation,
        crate::logs::LogEntry {
            request_id: request_id.to_owned(),
            version: version.version,
            time: wafer_core::now_unix(),
            outcome: outcome.to_owned(),
            duration_ms: seconds * 1000.0,
            log: String::from_utf8_lossy(log).into_owned(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_target_and_function_path() {
        let u: Uri = "/fn/hello@2/a/b?x=1".parse().unwrap();
        assert_eq!(split_path(&u), ("hello@2", "/a/b?x=1".to_string()));
        let u: Uri = "/fn/hello".parse().unwrap();
        assert_eq!(split_path(&u), ("hello", "/".to_string()));
        let u: Uri = "/fn/hello?name=x".parse().unwrap();
        assert_eq!(split_path(&u), ("hello", "/?name=x".to_string()));
    }

    #[test]
    fn json_output_is_labelled() {
        assert_eq!(content_type_of(br#"{"stress":100.0}"#), "application/json");
        assert_eq!(content_type_of(b"{not json"), "application/octet-stream");
        assert_eq!(content_type_of(b"hello"), "application/octet-stream");
    }
}
