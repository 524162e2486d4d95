//! Guest SDK for Wafer functions.
//!
//! Wafer runs two kinds of WebAssembly function, and this crate has a module for each:
//!
//! - [`command`]: a WASI command (preview 1 module or preview 2 component). The request body
//!   arrives on stdin, the response body leaves on stdout, stderr is the log and a nonzero exit
//!   code marks the invocation as failed.
//!
//!   ```no_run
//!   // src/main.rs of a `bin` crate: upper-cases its input.
//!   wafer_sdk::command::run(|input| Ok(input.to_ascii_uppercase()));
//!   ```
//!
//! - `http` (cargo feature `http`, target `wasm32-wasip2`): a component exporting
//!   `wasi:http/incoming-handler`, the `wasi:http/proxy` world that `wasmtime serve` runs. The
//!   whole HTTP request reaches the function.
//!
//!   ```ignore
//!   use wafer_sdk::http::{Request, Response};
//!
//!   fn handle(req: Request) -> Response {
//!       Response::text(200, format!("you asked for {}\n", req.path()))
//!   }
//!
//!   wafer_sdk::http_function!(handle);
//!   ```

pub mod command;
#[cfg(feature = "http")]
pub mod http;

/// Items the exported macros refer to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "http")]
    pub use wasip2;
}
