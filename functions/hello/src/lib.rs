//! `hello`: an HTTP component that greets `?name=` (default `world`) in plain text. With
//! `?max_age=N` the answer may be cached for N seconds (and with `&swr=M` served stale for M
//! more while it is revalidated) and carries an `ETag`, for tests of the response cache.

use wafer_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let name = req
        .query_param("name")
        .unwrap_or_else(|| "world".to_owned());
    let resp = Response::text(200, format!("Hello, {name}!\n"));
    match req
        .query_param("max_age")
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(secs) => resp
            .with_header(
                "cache-control",
                match req.query_param("swr") {
                    Some(swr) => format!("public, max-age={secs}, stale-while-revalidate={swr}"),
                    None => format!("public, max-age={secs}"),
                },
            )
            .with_header("etag", format!("\"{}\"", name.len())),
        None => resp,
    }
}

wafer_sdk::http_function!(handle);
