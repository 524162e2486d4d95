//! The HTTP ABI: a component exporting `wasi:http/incoming-handler`.
//!
//! Write `fn handler(req: Request) -> Response` and export it with
//! [`http_function!`](crate::http_function); build with `--target wasm32-wasip2` as a `cdylib`.
//! The SDK reads the whole request body before calling the handler and sends the whole response
//! body after it returns, which suits the small, short-lived functions Wafer runs.

use std::io::Write as _;

use serde::Serialize;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// Bytes asked of the host per read of the request body.
const READ_CHUNK: u64 = 64 * 1024;

/// An incoming HTTP request with its body read in full.
///
/// Header values that are not UTF-8 are decoded lossily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent, e.g. `GET`.
    pub method: String,
    /// The path and query as sent, e.g. `/greet?name=Ada`; `/` when the host gave none.
    pub path_with_query: String,
    /// Header names (lower case, as WASI gives them) and values, in order, repeats kept.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query, e.g. `/greet`.
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(self.path_with_query.as_str(), |(path, _)| path)
    }

    /// The raw query after `?`, or `""` when there is none.
    pub fn query(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or("", |(_, query)| query)
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()
            .split('&')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode_component(key) == name).then(|| decode_component(value))
            })
            .next()
    }

    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// An HTTP response to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status, body.into()).with_header("content-type", "text/plain; charset=utf-8")
    }

    /// An `application/json` response holding `value`; a 500 text response if it cannot be
    /// encoded (e.g. a map with non-string keys).
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status, body).with_header("content-type", "application/json"),
            Err(error) => Response::text(500, format!("cannot encode response as JSON: {error}\n")),
        }
    }

    /// Adds a header, keeping any already set under the same name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Exports `handler` (`fn(Request) -> Response`) as the component's
/// `wasi:http/incoming-handler`.
///
/// Use it once, at the top level of a `cdylib` built for `wasm32-wasip2`:
///
/// ```no_run
/// fn handle(_req: wafer_sdk::http::Request) -> wafer_sdk::http::Response {
///     wafer_sdk::http::Response::text(200, "ok\n")
/// }
/// wafer_sdk::http_function!(handle);
/// ```
#[macro_export]
macro_rules! http_function {
    ($handler:expr) => {
        const _: () = {
            struct WaferHttpFunction;

            impl $crate::__private::wasip2::exports::http::incoming_handler::Guest
                for WaferHttpFunction
            {
                fn handle(
                    request: $crate::__private::wasip2::http::types::IncomingRequest,
                    response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::http::serve(request, response_out, $handler);
                }
            }

            $crate::__private::wasip2::http::proxy::export!(WaferHttpFunction);
        };
    };
}

/// Reads `request`, calls `handler` and sends its response; used by
/// [`http_function!`](crate::http_function).
#[doc(hidden)]
pub fn serve(
    request: IncomingRequest,
    response_out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let request = match read_request(&request) {
        Ok(request) => request,
        Err(message) => {
            ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
            return;
        }
    };
    if let Err(message) = send_response(response_out, handler(request)) {
        eprintln!("wafer-sdk: {message}");
    }
}

fn read_request(request: &IncomingRequest) -> Result<Request, String> {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Other(other) => other,
    };
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();

    let incoming = request
        .consume()
        .map_err(|()| "request body was already taken".to_owned())?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| "request body stream was already taken".to_owned())?;
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Err(format!("reading request body: {}", error.to_debug_string()));
                }
            }
        }
    }
    // The stream, a child of the body, is dropped above; trailers are not used.
    drop(IncomingBody::finish(incoming));

    Ok(Request {
        method,
        path_with_query: request.path_with_query().unwrap_or_else(|| "/".to_owned()),
        headers,
        body,
    })
}

fn send_response(response_out: ResponseOutparam, response: Response) -> Result<(), String> {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let fields = match Fields::from_list(&entries) {
        Ok(fields) => fields,
        Err(error) => {
            let message = format!("response headers rejected: {error}");
            ResponseOutparam::set(
                response_out,
                Err(ErrorCode::InternalError(Some(message.clone()))),
            );
            return Err(message);
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(response.status).is_err() {
        let message = format!("invalid response status {}", response.status);
        ResponseOutparam::set(
            response_out,
            Err(ErrorCode::InternalError(Some(message.clone()))),
        );
        return Err(message);
    }
    let body = outgoing
        .body()
        .map_err(|()| "response body was already taken".to_owned())?;
    ResponseOutparam::set(response_out, Ok(outgoing));
    {
        let mut stream = body
            .write()
            .map_err(|()| "response body stream was already taken".to_owned())?;
        stream
            .write_all(&response.body)
            .map_err(|error| format!("writing response body: {error}"))?;
        stream
            .blocking_flush()
            .map_err(|error| format!("flushing response body: {error}"))?;
    }
    OutgoingBody::finish(body, None).map_err(|error| format!("finishing response body: {error}"))
}

/// Decodes one `application/x-www-form-urlencoded` component; malformed escapes are kept as is.
fn decode_component(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|pair| hex_pair(pair[0], pair[1]))
            {
                Some(byte) => {
                    decoded.push(byte);
                    i += 2;
                }
                None => decoded.push(b'%'),
            },
            other => decoded.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path_with_query: &str) -> Request {
        Request {
            method: "GET".to_owned(),
            path_with_query: path_with_query.to_owned(),
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: Vec::new(),
        }
    }

    #[test]
    fn path_and_query_split_at_the_first_question_mark() {
        let req = get("/greet?name=Ada&x=1?2");
        assert_eq!(req.path(), "/greet");
        assert_eq!(req.query(), "name=Ada&x=1?2");
        assert_eq!(get("/plain").query(), "");
    }

    #[test]
    fn query_param_decodes_and_takes_the_first_value() {
        let req = get("/?name=Ada+Lovelace&name=Bob&city=Z%C3%BCrich&flag");
        assert_eq!(req.query_param("name").as_deref(), Some("Ada Lovelace"));
        assert_eq!(req.query_param("city").as_deref(), Some("Zürich"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
        assert_eq!(decode_component("%41%62"), "Ab");
    }

    #[test]
    fn header_lookup_ignores_case() {
        assert_eq!(get("/").header("Content-Type"), Some("text/plain"));
        assert_eq!(get("/").header("accept"), None);
    }

    #[test]
    fn text_response_sets_content_type() {
        let response = Response::text(201, "hi");
        assert_eq!(response.status, 201);
        assert_eq!(response.body, b"hi");
        assert_eq!(
            response.headers,
            vec![(
                "content-type".to_owned(),
                "text/plain; charset=utf-8".to_owned()
            )]
        );
    }
}
