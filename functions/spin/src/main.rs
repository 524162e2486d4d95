//! `spin`: burns CPU forever; used to test that timeouts and fuel stop a busy guest.

use std::hint::black_box;

fn main() {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
