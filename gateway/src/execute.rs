//! Running one version of a function on a request in the server's pool, for synchronous
//! calls (`/fn/…`): the limits from the server's settings, the run through
//! [`wafer_worker::run`] (the way every route runs), and the log kept.

use crate::state::AppState;
use std::time::{Duration, Instant};
use tracing::Instrument;
use wafer_core::{FunctionRecord, VersionRecord};
use wafer_runner::{InvokeError, Limits, Outcome};
use wafer_worker::Call;

/// The limits of one invocation of `v`, with its own timeout when given.
pub fn limits_of(state: &AppState, v: &VersionRecord, timeout: Option<Duration>) -> Limits {
    wafer_worker::limits_of(
        timeout.unwrap_or(Duration::from_millis(v.spec.timeout_ms)),
        v.spec.fuel,
        v.spec.memory_mb,
        state.config.functions.caps(),
    )
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
    let what = wafer_worker::Run::of_version(function, version, limits);
    wafer_worker::run(&state.runner, what, call)
        .instrument(span.clone())
        .await
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
