//! `hello`: an HTTP component that greets `?name=` (default `world`) in plain text.

use wafer_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let name = req
        .query_param("name")
        .unwrap_or_else(|| "world".to_owned());
    Response::text(200, format!("Hello, {name}!\n"))
}

wafer_sdk::http_function!(handle);
