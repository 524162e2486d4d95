//! `inspect`: an HTTP component that answers with what it received (method, path with query,
//! headers, body length) as JSON, and logs a line on stderr. Used by tests to check what a
//! function sees of a request, and, with `?try=…`, what it may do:
//! `socket` (a TCP connection) and `http` (an outgoing request) report the refusal they get;
//! `fields` grows one set of headers and `resources` holds host resources until stopped;
//! `spin` loops forever and `hog` allocates without end, to test an HTTP component's limits.
//! `?status=N` or a JSON body `{"status": N}` answers with status N (a function's own error
//! answer) instead of 201.

use std::hint::black_box;
use wafer_sdk::http::{Request, Response};

fn try_socket() -> String {
    match std::net::TcpStream::connect(("127.0.0.1", 9)) {
        Ok(_) => "connected".into(),
        Err(e) => format!("refused: {e}"),
    }
}

fn try_http() -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some("127.0.0.1:9"));
    let _ = req.set_path_with_query(Some("/"));
    match outgoing_handler::handle(req, None) {
        Err(e) => format!("refused: {e:?}"),
        Ok(pending) => {
            pending.subscribe().block();
            match pending.get() {
                Some(Ok(Ok(_))) => "connected".into(),
                Some(Ok(Err(e))) => format!("refused: {e:?}"),
                other => format!("failed: {other:?}"),
            }
        }
    }
}

/// Holds header-field resources until the host refuses one; reports how many it got.
fn try_resources() -> String {
    let mut held = Vec::new();
    loop {
        held.push(wasip2::http::types::Fields::new());
        if held.len() > 1_000_000 {
            return format!("held {}", held.len());
        }
    }
}

/// Grows one set of header fields until the host refuses; reports the bytes it got in.
fn try_fields() -> String {
    let fields = wasip2::http::types::Fields::new();
    let value = vec![b'v'; 1024];
    for i in 0..100_000 {
        if let Err(e) = fields.append(&format!("x-h{i}"), &value) {
            return format!("refused after {i} KiB: {e:?}");
        }
    }
    "never refused".into()
}

fn hog() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(black_box(vec![1u8; 1 << 20]));
    }
}

fn handle(req: Request) -> Response {
    eprintln!("inspect saw {} {}", req.method, req.path_with_query);
    let tried = match req.query_param("try").as_deref() {
        Some("socket") => Some(try_socket()),
        Some("http") => Some(try_http()),
        Some("resources") => Some(try_resources()),
        Some("fields") => Some(try_fields()),
        Some("spin") => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        Some("hog") => hog(),
        _ => None,
    };
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
        "tried": tried,
    });
    // `?status=N` (or a JSON body `{"status": N}`) answers with that status instead of 201:
    // a function's own error answer.
    let asked = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v["status"].as_u64())
        .and_then(|s| u16::try_from(s).ok());
    let status = req
        .query_param("status")
        .and_then(|s| s.parse::<u16>().ok())
        .or(asked)
        .filter(|s| (200..600).contains(s))
        .unwrap_or(201);
    Response::json(status, &body).with_header("x-inspected", "yes")
}

wafer_sdk::http_function!(handle);
