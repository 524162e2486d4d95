//! `hog`: allocates and touches memory without end; used to test the memory limit.

use std::hint::black_box;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

fn main() {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        // Write every page so the memory is really committed, not just reserved.
        for (i, byte) in chunk.iter_mut().step_by(PAGE).enumerate() {
            *byte = i as u8 | 1;
        }
        chunks.push(black_box(chunk));
    }
}
