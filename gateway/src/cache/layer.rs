//! The cache as a tower layer in front of whatever answers invocations: the gateway's invoke
//! handler, or (in the sidecar) a proxy to a gateway. Where the layer runs decides only how
//! a request's [`Scope`] is found ([`ScopeSource`]); keys, levels, flights and the rules of
//! what is kept are the same code in both.

use super::{Lookup, ResponseCache, Scope, X_CACHE};
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt as _};

/// Finds the scope of an invocation request.
#[async_trait]
pub trait ScopeSource: Send + Sync + 'static {
    /// The scope of `parts`, or None when the request may not use the cache (the inner
    /// service then answers it, refusals included). May leave what it learnt in the
    /// request's extensions for the inner service.
    async fn scope(&self, parts: &mut Parts) -> Option<Scope>;

    /// Reads the body of a request that may use the cache, or the answer refusing it (too
    /// large, too slow).
    async fn read_body(&self, parts: &Parts, body: Body) -> Result<Bytes, Response>;
}

/// The layer: answers from the cache, or runs the inner service once for every caller
/// waiting on the same key.
pub struct CacheLayer<S> {
    cache: Arc<ResponseCache>,
    source: Arc<S>,
}

impl<S> Clone for CacheLayer<S> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            source: self.source.clone(),
        }
    }
}

impl<S> CacheLayer<S> {
    /// A layer over `cache`, finding scopes with `source`.
    pub fn new(cache: Arc<ResponseCache>, source: S) -> Self {
        Self {
            cache,
            source: Arc::new(source),
        }
    }
}

impl<S, I> tower::Layer<I> for CacheLayer<S> {
    type Service = CacheService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        CacheService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`CacheLayer`] wraps around an inner one.
pub struct CacheService<S, I> {
    layer: CacheLayer<S>,
    inner: I,
}

impl<S, I: Clone> Clone for CacheService<S, I> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// Conditional request headers: the cache answers them itself, so the inner service is
/// always asked for the whole answer.
const CONDITIONAL: [header::HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// A request for the inner service: the caller's, without its conditional headers.
fn for_inner(parts: &Parts, body: Bytes) -> Request {
    let mut r = Request::new(Body::from(body));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    for h in CONDITIONAL {
        r.headers_mut().remove(h);
    }
    *r.extensions_mut() = parts.extensions.clone();
    r
}

impl<S, I> Service<Request> for CacheService<S, I>
where
    S: ScopeSource,
    I: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let CacheLayer { cache, source } = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let cacheable_method =
                matches!(parts.method, Method::GET | Method::HEAD | Method::POST);
            let scope = match cacheable_method {
                true => source.scope(&mut parts).await,
                false => None,
            };
            let Some(scope) = scope.filter(|s| s.admits(&parts.method, &parts.headers)) else {
                cache.bypass();
                let mut resp = inner.oneshot(Request::from_parts(parts, body)).await?;
                resp.headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static("bypass"));
                return Ok(resp);
            };
            let body = match source.read_body(&parts, body).await {
                Ok(b) => b,
                Err(refusal) => return Ok(refusal),
            };
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let key = scope.key(&parts.method, path, &parts.headers, &body);
            let post = parts.method == Method::POST;
            match cache
                .lookup(key, &parts.headers, scope.policy.as_ref(), post)
                .await
            {
                Lookup::Hit(stored) => Ok(stored.response("hit", Some(&parts.headers))),
                Lookup::Stale(stored, leader) => {
                    if let Some(leader) = leader {
                        // One caller's request revalidates in the background; everyone is
                        // answered with the stale entry meanwhile.
                        let req = for_inner(&parts, body);
                        let headers = parts.headers.clone();
                        tokio::spawn(async move {
                            let Ok(resp) = inner.oneshot(req).await;
                            leader.finish(resp, &headers, false).await;
                        });
                    }
                    Ok(stored.response("stale", Some(&parts.headers)))
                }
                Lookup::Lead(leader) => {
                    let resp = inner.oneshot(for_inner(&parts, body)).await?;
                    Ok(leader.finish(resp, &parts.headers, true).await)
                }
            }
        })
    }
}
