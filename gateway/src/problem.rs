//! The one place errors become RFC 9457 `application/problem+json` responses.
//!
//! Every problem has a stable `type` URI (`https://wafer.dev/problems/<slug>`) that the CLI
//! and SDKs switch on, a title, the HTTP status and a detail that says what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use wafer_core::MetaError;
use wafer_runner::{CompileError, InvokeError};

/// Prefix of every problem type URI.
pub const TYPE_BASE: &str = "https://wafer.dev/problems/";

/// An API error: status, slug, title, detail and optional extension members.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable slug; the problem type is `TYPE_BASE + slug`.
    pub slug: &'static str,
    /// Short, fixed summary of the problem type.
    pub title: &'static str,
    /// What happened in this case, and what to do about it.
    pub detail: String,
    /// Extension members (`limit`, `exit_code`, `stderr`, …).
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A problem without extension members.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// 400: the request was malformed.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    /// 401: no or unknown API key.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 403: the key lacks a scope.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404 for a function (also used for other tenants' functions).
    pub fn function_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "function-not-found",
            "Function not found",
            format!("no function named {name:?}"),
        )
    }

    /// 503 with Retry-After: the server is at capacity.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            detail,
        );
        e.retry_after = Some(1);
        e.with("retry_after", 1)
    }

    /// 429 with Retry-After: the caller's tenant is at its own concurrency limit. Unlike 503
    /// `overloaded` (the host is full), the caller is asking for more than its share, and
    /// other tenants are still served.
    pub fn concurrency_limit(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency-limit",
            "Concurrency limit reached",
            detail,
        );
        e.retry_after = Some(1);
        e.with("retry_after", 1)
    }

    /// 500: a failure on our side; the detail is logged, not leaked.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "an internal error occurred; it has been logged",
        )
    }

    /// The problem document.
    pub fn body(&self, instance: Option<&str>) -> Value {
        let mut v = json!({
            "type": format!("{TYPE_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let obj = v.as_object_mut().expect("object");
        if let Some(i) = instance {
            obj.insert("instance".into(), Value::String(i.to_owned()));
        }
        for (k, val) in &self.extra {
            obj.insert(k.clone(), val.clone());
        }
        v
    }
}

tokio::task_local! {
    /// The request id of the request being handled, for problems' `instance`.
    static REQUEST_ID: String;
}

/// Runs `f` (the handling of one request) with `id` as the `instance` of any problem it
/// answers with.
pub async fn with_request_id<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = REQUEST_ID
            .try_with(|id| self.body(Some(id)))
            .unwrap_or_else(|_| self.body(None));
        let body = serde_json::to_vec(&body).expect("problem serializes");
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::FunctionNotFound(n) => ApiError::function_not_found(n.as_str()),
            MetaError::VersionNotFound { name, version } => ApiError::new(
                StatusCode::NOT_FOUND,
                "version-not-found",
                "Version not found",
                format!("function {name:?} has no version or alias {version:?}"),
            ),
            MetaError::Quota { quota, limit } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "quota-exceeded",
                "Quota exceeded",
                format!(
                    "this tenant already holds its quota of {limit} {quota}; delete what it no \
                     longer needs (unused modules are collected after the grace period)"
                ),
            )
            .with("quota", quota)
            .with("limit", limit),
            MetaError::Storage(s) => ApiError::internal(s),
        }
    }
}

impl From<wafer_core::NameError> for ApiError {
    fn from(e: wafer_core::NameError) -> Self {
        ApiError::bad_request("invalid-name", e.to_string())
    }
}

impl From<CompileError> for ApiError {
    fn from(e: CompileError) -> Self {
        let unprocessable = |slug, title| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title, e.to_string())
        };
        match &e {
            CompileError::Empty => ApiError::bad_request("empty-module", e.to_string()),
            CompileError::NotWasm => unprocessable("not-wasm", "Not WebAssembly"),
            CompileError::UnsupportedVersion(_) => {
                unprocessable("unsupported-version", "Unsupported WebAssembly version")
            }
            CompileError::Invalid(_) => unprocessable("invalid-module", "Invalid module"),
            CompileError::UnsupportedAbi(_) => unprocessable("unsupported-abi", "Unsupported ABI"),
            CompileError::UnsupportedImport(_) => {
                unprocessable("unsupported-import", "Unsupported import")
            }
            CompileError::Limits(_) => {
                unprocessable("instance-limits", "Module exceeds the instance limits")
            }
            CompileError::TooComplex(_) => {
                unprocessable("too-complex", "Module too costly to compile")
            }
            CompileError::Timeout(ms) => {
                unprocessable("compile-timeout", "Compilation timed out").with("limit", *ms)
            }
            CompileError::Resources(_) => {
                unprocessable("compile-resources", "Compilation exceeded its resources")
            }
            CompileError::Internal(s) => ApiError::internal(s),
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let detail = e.to_string();
        let bad_gateway =
            |slug, title| ApiError::new(StatusCode::BAD_GATEWAY, slug, title, detail.clone());
        match e {
            InvokeError::Trap { kind, .. } => {
                let title = match kind {
                    wafer_runner::TrapKind::FuelExhausted => "Fuel exhausted",
                    wafer_runner::TrapKind::Unreachable => "Unreachable executed",
                    wafer_runner::TrapKind::StackOverflow => "Stack overflow",
                    wafer_runner::TrapKind::MemoryOutOfBounds => "Out-of-bounds memory access",
                    wafer_runner::TrapKind::Arithmetic => "Arithmetic trap",
                    wafer_runner::TrapKind::Other => "Function trapped",
                };
                bad_gateway(kind.slug(), title)
            }
            InvokeError::Timeout(d) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "Function timed out",
                detail,
            )
            .with("limit", d.as_millis() as u64),
            InvokeError::MemoryLimit { limit, .. } => {
                bad_gateway("memory-limit", "Memory limit exceeded").with("limit", limit)
            }
            InvokeError::TableLimit { limit, .. } => {
                bad_gateway("table-limit", "Table limit exceeded").with("limit", limit)
            }
            InvokeError::OutputLimit { limit, .. } => {
                bad_gateway("output-limit", "Output limit exceeded").with("limit", limit)
            }
            // Callers who may not see the function's log get the exit code alone (the
            // handler empties `stderr` for them).
            InvokeError::Exit { code, ref stderr } if stderr.is_empty() => {
                bad_gateway("nonzero-exit", "Function exited with an error").with("exit_code", code)
            }
            InvokeError::Exit { code, ref stderr } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "nonzero-exit",
                "Function exited with an error",
                format!("{detail}: {}", tail_chars(stderr, 300).trim()),
            )
            .with("exit_code", code)
            .with("stderr", tail_chars(stderr, 2048)),
            InvokeError::NoResponse => bad_gateway("no-response", "No response"),
            InvokeError::GuestHttpError(_) => {
                bad_gateway("guest-http-error", "Function HTTP error")
            }
            InvokeError::Capacity => ApiError::overloaded(detail),
            InvokeError::Artifact(s) | InvokeError::Internal(s) => ApiError::internal(s),
            // Callers who may not see the function's log get the failure alone (the handler
            // empties `stderr` for them).
            InvokeError::Logged { error, stderr } => {
                let e = ApiError::from(*error);
                match stderr.is_empty() {
                    true => e,
                    false => e.with("stderr", tail_chars(&stderr, 2048)),
                }
            }
        }
    }
}

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn invoke_errors_map_to_precise_problems() {
        let e: ApiError = InvokeError::Timeout(Duration::from_millis(250)).into();
        assert_eq!((e.status.as_u16(), e.slug), (504, "timeout"));
        assert_eq!(e.extra["limit"], 250);
        let e: ApiError = InvokeError::Exit {
            code: 3,
            stderr: "boom".into(),
        }
        .into();
        assert_eq!((e.status.as_u16(), e.slug), (502, "nonzero-exit"));
        assert_eq!(e.extra["exit_code"], 3);
        assert!(e.detail.contains("boom"));
        let e: ApiError = InvokeError::Capacity.into();
        assert_eq!((e.status.as_u16(), e.retry_after), (503, Some(1)));
    }

    #[test]
    fn problem_body_has_type_and_instance() {
        let b = ApiError::bad_request("invalid-name", "x").body(Some("req-1"));
        assert_eq!(b["type"], "https://wafer.dev/problems/invalid-name");
        assert_eq!(b["status"], 400);
        assert_eq!(b["instance"], "req-1");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ab", 3), "ab");
    }
}
