//! `deep`: recurses without bound; used to test that stack exhaustion traps cleanly.

use std::hint::black_box;

/// Non-tail recursion: the result is mixed with `depth` after the call returns, so the call can
/// neither become a loop nor be dropped, and no frame lives in linear memory (the trap is
/// "call stack exhausted", not a stray memory access).
#[inline(never)]
#[expect(unconditional_recursion, reason = "running out of stack is the point")]
fn descend(depth: u64) -> u64 {
    descend(depth.wrapping_add(1)).rotate_left(7) ^ depth
}

fn main() {
    println!("{}", descend(black_box(0)));
}
