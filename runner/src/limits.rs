//! Per-invocation limits and the resource limiter that enforces memory and table bounds.

use std::time::Duration;
use wasmtime::ResourceLimiter;

/// The bounds of one invocation. Every size a guest controls has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline, host calls included.
    pub timeout: Duration,
    /// Fuel: a deterministic budget of wasm instructions.
    pub fuel: u64,
    /// Maximum size of each linear memory, in bytes.
    pub memory_bytes: usize,
    /// Maximum elements of each table.
    pub table_elements: usize,
    /// Maximum bytes of stdout (command ABI); more fails the invocation.
    pub stdout_bytes: usize,
    /// Maximum bytes of stderr kept; the tail is kept, the rest dropped.
    pub stderr_bytes: usize,
    /// Maximum bytes of an HTTP response body; more fails the invocation.
    pub response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            stdout_bytes: 8 << 20,
            stderr_bytes: 64 << 10,
            response_bytes: 8 << 20,
        }
    }
}

/// Which limit a guest ran into, remembered so the error can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// A memory grew (or was declared) beyond the limit.
    Memory { limit: usize, desired: usize },
    /// A table grew beyond the limit.
    Table { limit: usize, desired: usize },
}

/// The error a guest gets (as a trap) when it exceeds a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub struct LimitExceeded(pub LimitHit);

/// A [`ResourceLimiter`] that refuses growth past the invocation's limits with a trap that
/// names the limit, rather than a silent `-1` the guest would turn into a vague abort.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// The first limit hit, if any.
    pub hit: Option<LimitHit>,
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            hit: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            let hit = LimitHit::Memory {
                limit: self.memory_bytes,
                desired,
            };
            self.hit.get_or_insert(hit);
            return Err(wasmtime::Error::new(LimitExceeded(hit)));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            let hit = LimitHit::Table {
                limit: self.table_elements,
                desired,
            };
            self.hit.get_or_insert(hit);
            return Err(wasmtime::Error::new(LimitExceeded(hit)));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_limit_is_refused_and_remembered() {
        let mut l = Limiter::new(&Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        });
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(l.memory_growing(1 << 20, 2 << 20, None).is_err());
        assert_eq!(
            l.hit,
            Some(LimitHit::Memory {
                limit: 1 << 20,
                desired: 2 << 20
            })
        );
    }
}
