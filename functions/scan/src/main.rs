//! `scan`: looks for another invocation's data in its own linear memory. The environment
//! variable `MODE` picks the role:
//! - `keep`: writes the secret read from stdin all over a fresh 8 MiB buffer, and exits.
//! - `scan`: reads the secret with every byte inverted (so the secret itself never sits in
//!   this instance's memory), grows its memory by 16 MiB, and scans all of it; prints
//!   `found` or `clean`.
//! - `selftest`: does both in one invocation, so a working scanner must print `found`.

use std::hint::black_box;
use std::io::Read;

fn keep(secret: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 << 20];
    for chunk in buf.chunks_mut(secret.len()) {
        chunk.copy_from_slice(&secret[..chunk.len()]);
    }
    black_box(buf)
}

/// Whether the secret whose inverted bytes are `inverted` appears anywhere in linear memory.
fn scan(inverted: &[u8]) -> bool {
    // Touch fresh memory so the scan covers what a previous instance may have dirtied.
    let room = black_box(vec![0u8; 16 << 20]);
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let first = !inverted[0];
    // Address 0 is never read; the secret is longer than one byte anyway.
    for addr in 1..end.saturating_sub(inverted.len()) {
        // SAFETY: every address below the memory size is in bounds of linear memory.
        let byte = unsafe { core::ptr::read_volatile(addr as *const u8) };
        if byte != first {
            continue;
        }
        let whole = inverted.iter().enumerate().all(|(j, inv)| {
            // SAFETY: addr + j < end, checked by the loop bound.
            unsafe { core::ptr::read_volatile((addr + j) as *const u8) == !*inv }
        });
        if whole {
            drop(room);
            return true;
        }
    }
    drop(room);
    false
}

fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("stdin");
    let mode = std::env::var("MODE").unwrap_or_default();
    match mode.as_str() {
        "keep" => {
            keep(&input);
            println!("kept");
        }
        "scan" => println!("{}", if scan(&input) { "found" } else { "clean" }),
        "selftest" => {
            let secret: Vec<u8> = input.iter().map(|b| !b).collect();
            let kept = keep(&secret);
            drop(secret);
            println!("{}", if scan(&input) { "found" } else { "clean" });
            drop(kept);
        }
        other => {
            eprintln!("unknown MODE {other:?}");
            std::process::exit(2);
        }
    }
}
