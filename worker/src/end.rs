//! How a run ends: the [`Problem`] of a failed invocation ([`problem_of`], the one mapping
//! of runner errors, which synchronous calls answer with too), and a job's [`JobEnd`] and
//! output made of an invocation's result ([`end_of`]).

use bytes::Bytes;
use http::header;
use wafer_core::{JobEnd, JobRecord, JobResult, JobStatus, Problem};
use wafer_runner::{InvokeError, Outcome, Output, TrapKind};

/// The problem a failed invocation answers with: 502 for what the guest did (a trap, a limit
/// it hit, a non-zero exit), 504 for its timeout, 503 when there was no room to run it.
pub fn problem_of(e: InvokeError) -> Problem {
    let detail = e.to_string();
    let bad_gateway = |slug, title| Problem::new(502, slug, title, detail.clone());
    match e {
        InvokeError::Trap { kind, .. } => {
            let title = match kind {
                TrapKind::FuelExhausted => "Fuel exhausted",
                TrapKind::Unreachable => "Unreachable executed",
                TrapKind::StackOverflow => "Stack overflow",
                TrapKind::MemoryOutOfBounds => "Out-of-bounds memory access",
                TrapKind::Arithmetic => "Arithmetic trap",
                TrapKind::Other => "Function trapped",
            };
            bad_gateway(kind.slug(), title)
        }
        InvokeError::Timeout(d) => Problem::new(504, "timeout", "Function timed out", detail)
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
        // Callers who may not see the function's log get the exit code alone (the handler
        // empties `stderr` for them).
        InvokeError::Exit { code, ref stderr } if stderr.is_empty() => {
            bad_gateway("nonzero-exit", "Function exited with an error").with("exit_code", code)
        }
        InvokeError::Exit { code, ref stderr } => Problem::new(
            502,
            "nonzero-exit",
            "Function exited with an error",
            format!("{detail}: {}", tail_chars(stderr, 300).trim()),
        )
        .with("exit_code", code)
        .with("stderr", tail_chars(stderr, 2048)),
        InvokeError::NoResponse => bad_gateway("no-response", "No response"),
        InvokeError::GuestHttpError(_) => bad_gateway("guest-http-error", "Function HTTP error"),
        InvokeError::Capacity => Problem::overloaded(detail),
        InvokeError::Artifact(s) | InvokeError::Internal(s) => Problem::internal(s),
        // Callers who may not see the function's log get the failure alone (the handler
        // empties `stderr` for them).
        InvokeError::Logged { error, stderr } => {
            let p = problem_of(*error);
            match stderr.is_empty() {
                true => p,
                false => p.with("stderr", tail_chars(&stderr, 2048)),
            }
        }
    }
}

/// The last `n` characters of `s`.
fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// A job that failed with `problem`, having logged `stderr`; it has no output.
pub fn failed(problem: Problem, stderr: String) -> (JobEnd, Bytes) {
    (
        JobEnd {
            status: JobStatus::Failed,
            error: Some(problem.body(None)),
            result: None,
            stderr,
            runner: None,
        },
        Bytes::new(),
    )
}

/// The problem of a job whose function was deleted (or deleted and made again) after the job
/// was submitted: it fails when it comes to run, for good.
pub fn function_deleted(rec: &JobRecord) -> Problem {
    Problem::new(
        404,
        "function-not-found",
        "Function not found",
        format!(
            "function {:?} version {} was deleted after the job was submitted",
            rec.function.as_str(),
            rec.version
        ),
    )
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

/// The most bytes a runner's message with a job's end may take: a whole output of up to
/// `output_bytes` (base64), a whole log of up to `log_bytes` (JSON-escaped, at worst six bytes
/// a byte), and 64 KiB for the rest. The runners' API and the VM's channel both read it.
pub fn end_message_bytes(output_bytes: usize, log_bytes: usize) -> usize {
    output_bytes.div_ceil(3) * 4 + log_bytes * 6 + (64 << 10)
}

/// A job's end and output from what its invocation returned: the response (status, headers,
/// body) or, for a command, stdout with its content type; a problem when it failed.
pub fn end_of(result: Result<Outcome, InvokeError>) -> (JobEnd, Bytes) {
    match result {
        Ok(outcome) => {
            let log = String::from_utf8_lossy(&outcome.log).into_owned();
            let (result, body) = match outcome.output {
                Output::Http(r) => {
                    let (parts, body) = r.into_parts();
                    let headers = parts
                        .headers
                        .iter()
                        .filter(|(k, _)| {
                            *k != header::CONTENT_LENGTH && *k != header::TRANSFER_ENCODING
                        })
                        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                        .collect();
                    (
                        JobResult {
                            status: parts.status.as_u16(),
                            headers,
                            bytes: body.len() as u64,
                        },
                        body,
                    )
                }
                Output::Stdout(bytes) => (
                    JobResult {
                        status: 200,
                        headers: vec![("content-type".into(), content_type_of(&bytes).into())],
                        bytes: bytes.len() as u64,
                    },
                    bytes,
                ),
            };
            (
                JobEnd {
                    status: JobStatus::Succeeded,
                    error: None,
                    result: Some(result),
                    stderr: log,
                    runner: None,
                },
                body,
            )
        }
        Err(e) => {
            let stderr = e.stderr().to_owned();
            failed(problem_of(e), stderr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn invoke_errors_map_to_precise_problems() {
        let p = problem_of(InvokeError::Timeout(Duration::from_millis(250)));
        assert_eq!((p.status, p.slug), (504, "timeout"));
        assert_eq!(p.extra["limit"], 250);
        let p = problem_of(InvokeError::Exit {
            code: 3,
            stderr: "boom".into(),
        });
        assert_eq!((p.status, p.slug), (502, "nonzero-exit"));
        assert_eq!(p.extra["exit_code"], 3);
        assert!(p.detail.contains("boom"));
        let p = problem_of(InvokeError::Capacity);
        assert_eq!((p.status, p.retry_after), (503, Some(1)));
    }

    #[test]
    fn json_output_is_labelled() {
        assert_eq!(content_type_of(br#"{"stress":100.0}"#), "application/json");
        assert_eq!(content_type_of(b"{not json"), "application/octet-stream");
        assert_eq!(content_type_of(b"hello"), "application/octet-stream");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ab", 3), "ab");
    }
}
