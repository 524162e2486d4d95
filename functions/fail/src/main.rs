//! `fail`: logs `something went wrong: <stdin>` to stderr and exits with code 3; with
//! `panic` on stdin it panics instead (a message on stderr, then a trap).

use std::io::{self, Read};
use std::process;

fn main() {
    let mut input = Vec::new();
    // The input only decorates the message; an unreadable stdin still fails with code 3.
    let _ = io::stdin().read_to_end(&mut input);
    if input == b"panic" {
        panic!("a deliberate panic");
    }
    eprintln!("something went wrong: {}", String::from_utf8_lossy(&input));
    process::exit(3);
}
