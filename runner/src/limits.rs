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
    /// Memory budget of the whole instance, in bytes: every linear memory and every table
    /// (at [`TABLE_ELEMENT_BYTES`] an element) counts against it together.
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
            table_elements: MAX_TABLE_ELEMENTS,
            stdout_bytes: 8 << 20,
            stderr_bytes: 64 << 10,
            response_bytes: 8 << 20,
        }
    }
}

/// Elements any one table may hold; the pool's table slots are this large.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What one table element costs against the memory budget (a pointer-sized slot).
pub const TABLE_ELEMENT_BYTES: usize = 8;

/// Which limit a guest ran into, remembered so the error can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The instance's memories and tables together grew (or were declared) beyond the
    /// memory budget; `desired` is the total they would have reached.
    Memory { limit: usize, desired: usize },
    /// A table grew beyond the limit.
    Table { limit: usize, desired: usize },
}

/// The error a guest gets (as a trap) when it exceeds a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub struct LimitExceeded(pub LimitHit);

/// A [`ResourceLimiter`] that keeps the sum of all memories and tables of a store within the
/// invocation's memory budget, and refuses growth past it with a trap that names the limit,
/// rather than a silent `-1` the guest would turn into a vague abort.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Bytes held by the store's memories and tables.
    used: usize,
    /// The growth last allowed, taken back if the engine then fails it.
    pending: usize,
    /// The first limit hit, if any.
    pub hit: Option<LimitHit>,
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            used: 0,
            pending: 0,
            hit: None,
        }
    }

    /// Bytes held by the store's memories and tables now.
    pub fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, by: usize) -> wasmtime::Result<bool> {
        let after = self.used.saturating_add(by);
        if after > self.memory_bytes {
            let hit = LimitHit::Memory {
                limit: self.memory_bytes,
                desired: after,
            };
            self.hit.get_or_insert(hit);
            return Err(wasmtime::Error::new(LimitExceeded(hit)));
        }
        self.used = after;
        self.pending = by;
        Ok(true)
    }

    fn grow_failed(&mut self) {
        self.used -= self.pending.min(self.used);
        self.pending = 0;
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
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
        self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
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

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut l = Limiter::new(&Limits {
            memory_bytes: 4 << 20,
            ..Limits::default()
        });
        // Three memories of 1 MiB each, then a table of 64 Ki elements (512 KiB).
        for _ in 0..3 {
            assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        }
        assert!(l.table_growing(0, 64 << 10, None).unwrap());
        assert_eq!(l.used(), (3 << 20) + (512 << 10));
        // A fourth memory of 1 MiB no longer fits, although each memory alone would.
        assert!(l.memory_growing(0, 1 << 20, None).is_err());
        assert_eq!(
            l.hit,
            Some(LimitHit::Memory {
                limit: 4 << 20,
                desired: (4 << 20) + (512 << 10)
            })
        );
    }

    #[test]
    fn growth_the_engine_fails_is_given_back() {
        let mut l = Limiter::new(&Limits::default());
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(l.memory_growing(1 << 20, 3 << 20, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("beyond the maximum"))
            .unwrap();
        assert_eq!(l.used(), 1 << 20);
    }
}
