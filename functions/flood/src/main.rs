//! `flood`: writes to stdout forever; used to test the output limit. Exits 1 once stdout
//! refuses more.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let line = b"flood flood flood flood flood flood flood flood flood flood flood flood flood\n";
    let block = line.repeat(64 * 1024 / line.len());
    let mut stdout = io::stdout().lock();
    loop {
        if let Err(error) = stdout.write_all(&block) {
            eprintln!("flood stopped: {error}");
            return ExitCode::FAILURE;
        }
    }
}
