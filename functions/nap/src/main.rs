//! `nap`: sleeps 30 s in a host call, then prints `awake`; used to test that a timeout ends a
//! guest that is blocked rather than busy.

use std::thread;
use std::time::Duration;

fn main() {
    thread::sleep(Duration::from_secs(30));
    println!("awake");
}
