//! The one place errors become RFC 9457 `application/problem+json` responses.
//!
//! Every problem has a stable `type` URI (`https://wafer.dev/problems/<slug>`) that the CLI
//! and SDKs switch on, a title, the HTTP status and a detail that says what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use wafer_core::MetaError;
use wafer_core::Problem;
use wafer_runner::{CompileError, InvokeError};

pub use wafer_core::problem::TYPE_BASE;

/// An API error: a [`Problem`] on its way to becoming a response. Domain code (jobs,
/// workers) builds problems; handlers return this, and `?` turns domain errors into it.
#[derive(Debug)]
pub struct ApiError(pub Problem);

impl std::ops::Deref for ApiError {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut Problem {
        &mut self.0
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self(p)
    }
}

impl ApiError {
    /// A problem without extension members.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Problem::new(status.as_u16(), slug, title, detail))
    }

    /// Adds an extension member.
    pub fn with(self, key: &str, value: impl Into<Value>) -> Self {
        Self(self.0.with(key, value))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
        Self(Problem::overloaded(detail))
    }

    /// 500: a failure on our side; the detail is logged, not leaked.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self(Problem::internal(detail))
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
        let mut resp = (self.status(), body).into_response();
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
        Self(e.into())
    }
}

impl From<wafer_core::NameError> for ApiError {
    fn from(e: wafer_core::NameError) -> Self {
        Self(e.into())
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
        Self(wafer_worker::problem_of(e))
    }
}
