//! The HTTP edge, below every handler: the bounded accept loop ([`server`]), the one error
//! type that becomes `application/problem+json` ([`problem`]), bounded body reading
//! ([`body`], shared with the cache sidecar). It knows no route and no state; the routes are
//! composed in [`crate::router`].

pub mod body;
pub mod problem;
pub mod server;
