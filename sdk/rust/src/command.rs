//! The command ABI: request body on stdin, response body on stdout, log on stderr.
//!
//! A function's `main` hands its logic to [`run`] (raw bytes) or [`run_json`] (serde types);
//! these read all of stdin, call the handler once, write its output and turn errors into the
//! exit codes the platform reports.

use std::io::{self, Read, Write};
use std::process;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit code when the handler returns an error: the message is on stderr.
pub const EXIT_FAILURE: i32 = 1;

/// Exit code when the input cannot be read or (for [`run_json`]) is not the expected JSON.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Runs a command function over raw bytes.
///
/// Reads stdin to the end, calls `handler` with it and writes the returned bytes to stdout.
/// When the handler returns `Err(message)`, the message goes to stderr and the process exits
/// with [`EXIT_FAILURE`]; an unreadable stdin exits with [`EXIT_BAD_INPUT`].
pub fn run(handler: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, String>) {
    let input = read_input();
    match handler(input) {
        Ok(output) => write_output(&output),
        Err(message) => fail(EXIT_FAILURE, &message),
    }
}

/// Runs a command function over JSON values.
///
/// Parses stdin as a `T`, calls `handler` and writes the returned `U` to stdout as compact JSON
/// (no trailing newline). Input that is not valid JSON for `T` exits with [`EXIT_BAD_INPUT`]
/// after saying why on stderr; `Err(message)` from the handler exits with [`EXIT_FAILURE`].
pub fn run_json<T, U>(handler: impl FnOnce(T) -> Result<U, String>)
where
    T: DeserializeOwned,
    U: Serialize,
{
    let input = read_input();
    let value = match serde_json::from_slice(&input) {
        Ok(value) => value,
        Err(error) => fail(EXIT_BAD_INPUT, &format!("invalid JSON input: {error}")),
    };
    match handler(value) {
        Ok(output) => match serde_json::to_vec(&output) {
            Ok(bytes) => write_output(&bytes),
            Err(error) => fail(
                EXIT_FAILURE,
                &format!("cannot encode output as JSON: {error}"),
            ),
        },
        Err(message) => fail(EXIT_FAILURE, &message),
    }
}

fn read_input() -> Vec<u8> {
    let mut input = Vec::new();
    if let Err(error) = io::stdin().lock().read_to_end(&mut input) {
        fail(
            EXIT_BAD_INPUT,
            &format!("cannot read input from stdin: {error}"),
        );
    }
    input
}

fn write_output(output: &[u8]) {
    let mut stdout = io::stdout().lock();
    if let Err(error) = stdout.write_all(output).and_then(|()| stdout.flush()) {
        fail(
            EXIT_FAILURE,
            &format!("cannot write output to stdout: {error}"),
        );
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("{message}");
    process::exit(code)
}
