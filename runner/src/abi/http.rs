//! The HTTP ABI: components exporting `wasi:http/incoming-handler` get the whole request.
//!
//! The handler runs and its response body is collected concurrently in the caller's task;
//! the store is dropped as soon as the handler returns, so a guest that never sets a response
//! is noticed at once, and the body is read under the response-size cap.

use super::{HostState, apply_limits, classify, fuel_used};
use crate::error::InvokeError;
use crate::limits::{LimitHit, Limits};
use crate::output::{CappedOutput, Overflow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::time::Instant;
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// What a finished HTTP invocation left behind.
pub struct HttpRun {
    /// The response, body buffered.
    pub response: http::Response<Bytes>,
    /// The tail of everything the guest printed (stdout and stderr).
    pub log: Bytes,
    /// Fuel consumed.
    pub fuel: u64,
}

/// Runs an HTTP component on one request.
pub async fn run(
    engine: &Engine,
    pre: &ProxyPre<HostState>,
    limits: &Limits,
    env: &[(String, String)],
    request: http::Request<Bytes>,
) -> Result<HttpRun, InvokeError> {
    let deadline = Instant::now() + limits.timeout;
    let log = CappedOutput::new(limits.stderr_bytes, Overflow::KeepTail);
    let wasi = WasiCtxBuilder::new()
        .stdout(log.clone())
        .stderr(log.clone())
        .envs(env)
        .build();
    let mut store = Store::new(engine, HostState::new(wasi, limits));
    apply_limits(&mut store, limits, deadline);

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let internal = |e: wasmtime::Error| InvokeError::Internal(format!("{e:#}"));
    let request = request.map(Full::new);
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(internal)?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(internal)?;

    let handler = async move {
        let result = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        }
        .await;
        let hit: Option<LimitHit> = store.data_mut().limiter_hit();
        let fuel = fuel_used(&store, limits);
        // Dropping the store drops the response-outparam, waking the receiver if unset.
        drop(store);
        (result, hit, fuel)
    };
    let response_limit = limits.response_bytes;
    let response = async move {
        match receiver.await {
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                match Limited::new(body, response_limit).collect().await {
                    Ok(body) => Ok(http::Response::from_parts(parts, body.to_bytes())),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(InvokeError::OutputLimit {
                            stream: "response body",
                            limit: response_limit,
                        })
                    }
                    Err(e) => Err(InvokeError::GuestHttpError(e.to_string())),
                }
            }
            Ok(Err(code)) => Err(InvokeError::GuestHttpError(format!("{code:?}"))),
            Err(_) => Err(InvokeError::NoResponse),
        }
    };
    let both = async { tokio::join!(handler, response) };
    let ((result, hit, fuel), response) = match tokio::time::timeout(limits.timeout, both).await {
        Ok(r) => r,
        Err(_) => return Err(InvokeError::Timeout(limits.timeout).with_log(&log.contents())),
    };
    if let Err(e) = result {
        return Err(classify(e, hit, limits).with_log(&log.contents()));
    }
    Ok(HttpRun {
        response: response.map_err(|e| e.with_log(&log.contents()))?,
        log: log.contents(),
        fuel,
    })
}
