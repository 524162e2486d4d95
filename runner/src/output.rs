//! Bounded guest output: stdout that fails the invocation past its cap, and stderr that keeps
//! only its tail. Both implement wasmtime-wasi's stdio traits for preview 1 and preview 2.

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The most a guest may write in one call; keeps host copies small.
const MAX_PERMIT: usize = 64 * 1024;

/// What happens when a guest writes more than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The write fails with a trap; the invocation fails with an output-limit error.
    Fail,
    /// Older bytes are dropped so that the last `cap` bytes are kept (logs).
    KeepTail,
}

/// An in-memory output stream with a hard cap.
#[derive(Debug, Clone)]
pub struct CappedOutput {
    buf: Arc<Mutex<BytesMut>>,
    overflowed: Arc<AtomicBool>,
    cap: usize,
    mode: Overflow,
}

/// The error carried by the trap when stdout goes past its cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {0} bytes exceeded")]
pub struct OutputLimitExceeded(pub usize);

impl CappedOutput {
    /// A stream keeping at most `cap` bytes, behaving as `mode` says past that.
    pub fn new(cap: usize, mode: Overflow) -> Self {
        Self {
            buf: Arc::new(Mutex::new(BytesMut::new())),
            overflowed: Arc::new(AtomicBool::new(false)),
            cap,
            mode,
        }
    }

    /// Whether the guest tried to write past the cap.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The bytes kept so far.
    pub fn contents(&self) -> Bytes {
        self.buf.lock().expect("output lock").clone().freeze()
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Appends `bytes`, or fails when the cap is hit in `Fail` mode.
    fn push(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut buf = self.buf.lock().expect("output lock");
        if buf.len() + bytes.len() <= self.cap {
            buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.overflowed.store(true, Ordering::Relaxed);
        match self.mode {
            Overflow::Fail => Err(OutputLimitExceeded(self.cap)),
            Overflow::KeepTail => {
                let keep_new = bytes.len().min(self.cap);
                let keep_old = (self.cap - keep_new).min(buf.len());
                let drop = buf.len() - keep_old;
                let _ = buf.split_to(drop);
                buf.extend_from_slice(&bytes[bytes.len() - keep_new..]);
                Ok(())
            }
        }
    }
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Never report "full": a guest that waits for room would spin until its deadline.
        // It may write; the write past the cap is what fails.
        Ok(MAX_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.push(buf).map(|_| buf.len()).map_err(io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_mode_refuses_past_the_cap() {
        let o = CappedOutput::new(4, Overflow::Fail);
        o.push(b"abc").unwrap();
        assert!(o.push(b"de").is_err());
        assert!(o.overflowed());
        assert_eq!(o.contents(), &b"abc"[..]);
    }

    #[test]
    fn tail_mode_keeps_the_last_bytes() {
        let o = CappedOutput::new(4, Overflow::KeepTail);
        o.push(b"abc").unwrap();
        o.push(b"def").unwrap();
        assert_eq!(o.contents(), &b"cdef"[..]);
        o.push(b"0123456789").unwrap();
        assert_eq!(o.contents(), &b"6789"[..]);
        assert!(o.overflowed());
    }
}
