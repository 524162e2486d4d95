//! The request a function runs on ([`Call`]) and the guest input made of it ([`input_of`]):
//! one way for synchronous calls, jobs in the server's pool, workers and VMs.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use wafer_core::Abi;
use wafer_runner::{Input, InvokeError};

/// The request a function is run on.
pub struct Call {
    /// The method.
    pub method: Method,
    /// The path below the function, with its query.
    pub path: String,
    /// The headers (Wafer's credentials are removed before the function sees them).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Call {
    /// A job's stored request head replayed with `body`: headers that no longer parse are
    /// dropped, an unknown method is a POST.
    pub fn replay(request: &wafer_core::RequestHead, body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        for (k, v) in &request.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                headers.append(k, v);
            }
        }
        Call {
            method: Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::POST),
            path: request.path.clone(),
            headers,
            body,
        }
    }
}

/// Whether a header is one of Wafer's credentials, which are not the function's business.
pub fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION
}

/// The guest's input for `call`: the whole request for an HTTP component; for a command, the
/// body on stdin, and with `request_env` the method and path in `WAFER_METHOD` and
/// `WAFER_PATH` (added to `env`).
pub fn input_of(
    abi: Abi,
    request_env: bool,
    env: &mut Vec<(String, String)>,
    call: Call,
) -> Result<Input, InvokeError> {
    Ok(match abi {
        Abi::Http => {
            let mut builder = http::Request::builder()
                .method(call.method)
                .uri(call.path.as_str());
            for (k, v) in &call.headers {
                if !is_credential(k) {
                    builder = builder.header(k, v);
                }
            }
            if !call.headers.contains_key(header::HOST) {
                builder = builder.header(header::HOST, "localhost");
            }
            Input::Http(Box::new(
                builder
                    .body(call.body)
                    .map_err(|e| InvokeError::Internal(e.to_string()))?,
            ))
        }
        Abi::Command => {
            if request_env {
                env.push(("WAFER_METHOD".into(), call.method.to_string()));
                env.push(("WAFER_PATH".into(), call.path));
            }
            Input::Stdin(call.body)
        }
    })
}
