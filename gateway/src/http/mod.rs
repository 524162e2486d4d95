//! The HTTP edge: the router with its layers ([`router`]), the bounded accept loop
//! ([`server`]), the one error type that becomes `application/problem+json` ([`problem`]),
//! API keys and the caller of a request ([`auth`]), bounded body reading ([`body`]).

pub mod auth;
pub mod body;
pub mod problem;
pub mod router;
pub mod server;
