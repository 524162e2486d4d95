//! The problem document (RFC 9457) as a domain value: what went wrong, with a stable type
//! slug, a status and a detail that says what to fix. Job ends carry one, workers build them
//! from how a run ended, and the gateway's one error type at the HTTP edge wraps one; none of
//! them needs the HTTP stack to do so.

use serde_json::{Map, Value, json};

/// Prefix of every problem type URI.
pub const TYPE_BASE: &str = "https://wafer.dev/problems/";

/// A problem: status, slug, title, detail and extension members.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status it answers with.
    pub status: u16,
    /// Stable slug; the problem type is `TYPE_BASE + slug`.
    pub slug: &'static str,
    /// Short, fixed summary of the problem type.
    pub title: &'static str,
    /// What happened in this case, and what to do about it.
    pub detail: String,
    /// Extension members (`limit`, `exit_code`, `stderr`, …).
    pub extra: Map<String, Value>,
    /// Seconds after which asking again may succeed (a `Retry-After` at the edge).
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem without extension members.
    pub fn new(
        status: u16,
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
        Self::new(400, slug, "Bad request", detail)
    }

    /// 503 with a retry after one second: there is no room now.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        let mut p = Self::new(503, "overloaded", "Overloaded", detail);
        p.retry_after = Some(1);
        p.with("retry_after", 1)
    }

    /// 429 with a retry after one second: the caller's tenant is at its own concurrency
    /// limit. Unlike 503 `overloaded` (the host is full), the caller is asking for more than
    /// its share, and other tenants are still served.
    pub fn concurrency_limit(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            429,
            "concurrency-limit",
            "Concurrency limit reached",
            detail,
        );
        p.retry_after = Some(1);
        p.with("retry_after", 1)
    }

    /// 500: a failure on our side; the detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            500,
            "internal",
            "Internal server error",
            "an internal error occurred; it has been logged",
        )
    }

    /// The slug of a problem document's `type`, if it is one of ours.
    pub fn slug_of(body: &Value) -> Option<&str> {
        body["type"].as_str()?.strip_prefix(TYPE_BASE)
    }

    /// The problem document, with `instance` (the request id) when there is one.
    pub fn body(&self, instance: Option<&str>) -> Value {
        let mut v = json!({
            "type": format!("{TYPE_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status,
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

impl From<crate::MetaError> for Problem {
    fn from(e: crate::MetaError) -> Self {
        use crate::MetaError;
        match e {
            MetaError::FunctionNotFound(n) => Problem::new(
                404,
                "function-not-found",
                "Function not found",
                format!("no function named {:?}", n.as_str()),
            ),
            MetaError::VersionNotFound { name, version } => Problem::new(
                404,
                "version-not-found",
                "Version not found",
                format!("function {name:?} has no version or alias {version:?}"),
            ),
            MetaError::Quota { quota, limit } => Problem::new(
                422,
                "quota-exceeded",
                "Quota exceeded",
                format!(
                    "this tenant already holds its quota of {limit} {quota}; delete what it no \
                     longer needs (unused modules are collected after the grace period)"
                ),
            )
            .with("quota", quota)
            .with("limit", limit),
            MetaError::Storage(s) => Problem::internal(s),
        }
    }
}

impl From<crate::NameError> for Problem {
    fn from(e: crate::NameError) -> Self {
        Problem::bad_request("invalid-name", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_has_its_type_status_and_instance() {
        let p = Problem::new(400, "invalid-name", "Bad request", "x").with("limit", 3);
        let b = p.body(Some("req-1"));
        assert_eq!(b["type"], "https://wafer.dev/problems/invalid-name");
        assert_eq!(
            (b["status"].as_u64(), b["limit"].as_u64()),
            (Some(400), Some(3))
        );
        assert_eq!(b["instance"], "req-1");
        assert_eq!(Problem::slug_of(&b), Some("invalid-name"));
        assert!(p.body(None).get("instance").is_none());
    }
}
