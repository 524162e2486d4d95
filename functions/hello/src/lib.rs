//! `hello`: an HTTP component that greets `?name=` (default `world`) in plain text. For tests
//! of the response cache: with `?max_age=N` the answer may be cached for N seconds (and with
//! `&swr=M` served stale for M more while it is revalidated) and carries an `ETag`;
//! `?cache_control=V` sets `Cache-Control: V` as given, `?set_cookie=1` adds a `Set-Cookie`,
//! `?pad=N` makes the body N bytes longer, `?who=H` names the request's header `H` in the
//! greeting (`Hello, NAME (VALUE)!`), `?vary=H` answers `Vary: H`, and `?sleep_ms=N` takes N
//! ms (at most 10 s) before answering.

use wafer_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let name = req
        .query_param("name")
        .unwrap_or_else(|| "world".to_owned());
    let pad = req
        .query_param("pad")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
        .min(16 << 20);
    if let Some(ms) = req
        .query_param("sleep_ms")
        .and_then(|s| s.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
    }
    let who = match req.query_param("who") {
        Some(h) => format!("{name} ({})", req.header(&h).unwrap_or("-")),
        None => name,
    };
    let mut resp = Response::text(200, format!("Hello, {who}!\n{}", ".".repeat(pad)));
    if let Some(h) = req.query_param("vary") {
        resp = resp.with_header("vary", h);
    }
    if let Some(secs) = req
        .query_param("max_age")
        .and_then(|s| s.parse::<u32>().ok())
    {
        resp = resp
            .with_header(
                "cache-control",
                match req.query_param("swr") {
                    Some(swr) => format!("public, max-age={secs}, stale-while-revalidate={swr}"),
                    None => format!("public, max-age={secs}"),
                },
            )
            .with_header("etag", format!("\"{}\"", who.len()));
    }
    if let Some(cc) = req.query_param("cache_control") {
        resp = resp.with_header("cache-control", cc);
    }
    if req.query_param("set_cookie").is_some() {
        resp = resp.with_header("set-cookie", "session=1");
    }
    resp
}

wafer_sdk::http_function!(handle);
