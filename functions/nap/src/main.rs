//! `nap`: sleeps in a host call, then prints `awake`; used to test that a timeout ends a guest
//! that is blocked rather than busy, and that a draining server lets a call finish. It sleeps
//! for the number of milliseconds on stdin, or 30 s when stdin holds no number.

use std::io::Read;
use std::thread;
use std::time::Duration;

fn main() {
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let ms = input.trim().parse().unwrap_or(30_000);
    thread::sleep(Duration::from_millis(ms));
    println!("awake");
}
