//! The runner processes alive, by kind: counted by whoever starts them, read by health,
//! metrics and the dispatchers that bound them.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many runner processes are alive, by kind.
#[derive(Default)]
pub struct Fleet {
    pub(crate) workers: AtomicUsize,
    pub(crate) dedicated: AtomicUsize,
}

impl Fleet {
    /// Workers alive now.
    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    /// Dedicated runners alive now.
    pub fn dedicated(&self) -> usize {
        self.dedicated.load(Ordering::Relaxed)
    }
}
