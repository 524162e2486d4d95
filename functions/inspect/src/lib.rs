//! `inspect`: an HTTP component that answers with what it received (method, path with query,
//! headers, body length) as JSON, and logs a line on stderr. Used by tests to check what a
//! function sees of a request.

use wafer_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    eprintln!("inspect saw {} {}", req.method, req.path_with_query);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let body = serde_json::json!({
        "method": req.method,
        "path": req.path_with_query,
        "headers": headers,
        "body_len": req.body.len(),
    });
    Response::json(201, &body).with_header("x-inspected", "yes")
}

wafer_sdk::http_function!(handle);
