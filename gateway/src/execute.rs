//! Running one version of a function on a request: shared by synchronous calls (`/fn/…`) and
//! jobs the server runs in its own pool, so both see the same input, limits and logs.

use crate::state::AppState;
use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wafer_core::{Abi, FunctionRecord, VersionRecord};
use wafer_runner::{Input, Invocation, InvokeError, Limits, Outcome};

/// The request a function is run on.
pub struct Call {
    /// The method.
    pub method: Method,
    /// The path below the function, with its query.
    pub path: String,
    /// The headers (Wafer's credentials are removed before the function sees them).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Call {
    /// A job's stored request head replayed with `body`: headers that no longer parse are
    /// dropped, an unknown method is a POST.
    pub fn replay(request: &wafer_core::RequestHead, body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        for (k, v) in &request.headers {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::try_from(k),
                axum::http::HeaderValue::try_from(v),
            ) {
                headers.append(k, v);
            }
        }
        Call {
            method: Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::POST),
            path: request.path.clone(),
            headers,
            body,
        }
    }
}

/// The limits of one invocation of `v`, with its own timeout when given.
pub fn limits_of(state: &AppState, v: &VersionRecord, timeout: Option<Duration>) -> Limits {
    let d = &state.config.functions;
    Limits {
        timeout: timeout.unwrap_or(Duration::from_millis(v.spec.timeout_ms)),
        fuel: v.spec.fuel,
        memory_bytes: (v.spec.memory_mb as usize) << 20,
        table_elements: wafer_runner::limits::MAX_TABLE_ELEMENTS,
        stdout_bytes: d.max_stdout_bytes,
        stderr_bytes: d.max_log_bytes,
        response_bytes: d.max_response_bytes,
    }
}

/// Whether a header is one of Wafer's credentials, which are not the function's business.
pub fn is_credential(name: &header::HeaderName) -> bool {
    name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION
}

/// Runs `call` on `version` of `function` in the server's runner pool; the flag is true on a
/// cold start. The caller holds an admission slot.
pub async fn run(
    state: &AppState,
    function: &FunctionRecord,
    version: &VersionRecord,
    call: Call,
    limits: Limits,
    span: &tracing::Span,
) -> Result<(Outcome, bool), InvokeError> {
    let mut env: Vec<(String, String)> = version
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let input = input_of(version.spec.abi, version.spec.request_env, &mut env, call)?;
    async {
        let (prepared, cold) = state.runner.prepare(&version.spec.module).await?;
        let inv = Invocation {
            limits,
            args: vec![function.name.to_string()],
            env,
            input,
        };
        state.runner.invoke(prepared, inv).await.map(|o| (o, cold))
    }
    .instrument(span.clone())
    .await
}

/// The guest's input for `call`: the whole request for an HTTP component; for a command, the
/// body on stdin, and with `request_env` the method and path in `WAFER_METHOD` and
/// `WAFER_PATH` (added to `env`).
pub fn input_of(
    abi: Abi,
    request_env: bool,
    env: &mut Vec<(String, String)>,
    call: Call,
) -> Result<Input, InvokeError> {
    Ok(match abi {
        Abi::Http => {
            let mut builder = axum::http::Request::builder()
                .method(call.method)
                .uri(call.path.as_str());
            for (k, v) in &call.headers {
                if !is_credential(k) {
                    builder = builder.header(k, v);
                }
            }
            if !call.headers.contains_key(header::HOST) {
                builder = builder.header(header::HOST, "localhost");
            }
            Input::Http(Box::new(
                builder
                    .body(call.body)
                    .map_err(|e| InvokeError::Internal(e.to_string()))?,
            ))
        }
        Abi::Command => {
            if request_env {
                env.push(("WAFER_METHOD".into(), call.method.to_string()));
                env.push(("WAFER_PATH".into(), call.path));
            }
            Input::Stdin(call.body)
        }
    })
}

/// Keeps the tail of an invocation's log for `GET /v1/functions/{name}/logs`.
pub fn keep_log(
    state: &AppState,
    function: &FunctionRecord,
    version: &VersionRecord,
    request_id: &str,
    outcome: &str,
    started: Instant,
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
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            log: String::from_utf8_lossy(log).into_owned(),
        },
    );
}

/// Response body type of command output: JSON when it parses as JSON.
pub fn content_type_of(stdout: &[u8]) -> &'static str {
    let first = stdout.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{') | Some(b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(stdout).is_ok()
    {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_is_labelled() {
        assert_eq!(content_type_of(br#"{"stress":100.0}"#), "application/json");
        assert_eq!(content_type_of(b"{not json"), "application/octet-stream");
        assert_eq!(content_type_of(b"hello"), "application/octet-stream");
    }
}
