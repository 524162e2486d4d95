//! `echo`: copies stdin to stdout byte for byte, streaming, so any body size works.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdout = io::stdout().lock();
    match io::copy(&mut io::stdin().lock(), &mut stdout).and_then(|_| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
