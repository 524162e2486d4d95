//! The routes and the layers every request passes through: request ids, tracing and problem
//! decoration.

use crate::api;
use crate::cache::CacheLayer;
use crate::http::problem::{self, ApiError};
use crate::state::AppState;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, put};
use std::sync::Arc;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// Every route, with request ids, tracing and problem decoration as layers; without the
/// runners' internal API when `with_internal` is false (it then has a listener of its own,
/// [`internal_router`]).
pub fn router(state: Arc<AppState>, with_internal: bool) -> Router {
    use api::{functions, health, internal, jobs, keys, modules};
    let internal = match with_internal {
        true => internal::routes(state.clone()),
        false => Router::new(),
    };
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .route("/v1/modules", put(modules::upload))
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            put(functions::put)
                .get(functions::get)
                .delete(functions::delete),
        )
        .route("/v1/functions/{name}/versions", get(functions::versions))
        .route("/v1/functions/{name}/logs", get(functions::logs))
        .route(
            "/v1/functions/{name}/cache",
            axum::routing::delete(functions::purge_cache),
        )
        .route(
            "/v1/functions/{name}/aliases/{alias}",
            put(functions::set_alias),
        )
        .route(
            "/v1/keys",
            axum::routing::post(keys::create).get(keys::list),
        )
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route(
            "/v1/jobs",
            axum::routing::post(jobs::submit).get(jobs::list),
        )
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/result", get(jobs::result))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/admin/status", get(health::status))
        .route(
            "/v1/webhooks/secret",
            axum::routing::post(jobs::rotate_webhook_secret),
        )
        .merge(internal)
        .route("/v1/admin/gc", axum::routing::post(health::collect_garbage))
        .route("/v1/cache/scope/{target}", get(functions::cache_scope))
        .merge(invocations(state.clone()));
    decorated(routes, state)
}

/// The runners' internal API alone, for a listener of its own (`internal_listen`), with
/// `/healthz` for probes.
pub fn internal_router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(api::health::healthz))
        .merge(api::internal::routes(state.clone()));
    decorated(routes, state)
}

/// `routes` with the fallbacks and the layers every listener has: problem decoration, request
/// ids and tracing.
fn decorated(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(problem_decoration))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Function failures are 5xx answers, not server faults: keep them out of ERROR logs.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
}

/// The invoke routes, behind the response cache unless it is turned off.
fn invocations(state: Arc<AppState>) -> Router<Arc<AppState>> {
    use api::invoke;
    let routes = Router::new()
        .route("/fn/{target}", any(invoke::invoke))
        .route("/fn/{target}/", any(invoke::invoke))
        .route("/fn/{target}/{*path}", any(invoke::invoke));
    if !state.config.cache.enabled {
        return routes;
    }
    routes.route_layer(CacheLayer::new(
        state.cache.clone(),
        invoke::InvokeScopes::new(state),
    ))
}

/// Request ids: random (v4) UUIDs from the thread's generator. tower-http's `MakeRequestUuid`
/// asks the kernel for randomness on every request, which showed in profiles of cache hits.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
            .ok()
            .map(RequestId::new)
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such route; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// Gives problems the request id as `instance`, and on a 4xx answer to a request that carried
/// a body (which may not have been read) asks for the connection to be closed, so a client
/// does not reuse a connection with unread bytes in flight.
async fn problem_decoration(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let had_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = match id {
        Some(id) => problem::with_request_id(id, next.run(req)).await,
        None => next.run(req).await,
    };
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if is_problem && had_body && resp.status().is_client_error() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
