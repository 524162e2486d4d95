//! Recent invocation logs: the tail of each invocation's stderr (and HTTP functions' stdout),
//! kept in memory per function so `wafer logs NAME` can show what a function printed.
//!
//! Bounded three ways: entries per function, bytes per entry, and functions tracked (least
//! recently used functions are forgotten). Each function has its own lock. Logs are kept per
//! incarnation of a name, so a function created again under a deleted name starts empty, even
//! when an invocation of the old one finishes after the delete.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Entries kept per function.
pub const ENTRIES_PER_FUNCTION: usize = 20;
/// Bytes of log kept per entry (the tail).
pub const BYTES_PER_ENTRY: usize = 4096;
/// Functions tracked.
pub const FUNCTIONS_TRACKED: u64 = 512;

/// One invocation's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// The request id of the invocation.
    pub request_id: String,
    /// The version that ran.
    pub version: u32,
    /// Unix seconds when it finished.
    pub time: u64,
    /// `ok` or the problem slug.
    pub outcome: String,
    /// Wall-clock milliseconds.
    pub duration_ms: f64,
    /// The tail of what the function printed (lossy UTF-8).
    pub log: String,
}

/// The per-function rings of recent logs.
pub struct LogBook {
    rings: moka::sync::Cache<(String, u64), Arc<Mutex<VecDeque<LogEntry>>>>,
}

impl Default for LogBook {
    fn default() -> Self {
        Self {
            rings: moka::sync::Cache::new(FUNCTIONS_TRACKED),
        }
    }
}

impl LogBook {
    /// Records an invocation's log, keeping only the tail of long logs.
    pub fn push(&self, function: &str, incarnation: u64, mut entry: LogEntry) {
        if entry.log.len() > BYTES_PER_ENTRY {
            let mut cut = entry.log.len() - BYTES_PER_ENTRY;
            while !entry.log.is_char_boundary(cut) {
                cut += 1;
            }
            entry.log = entry.log.split_off(cut);
        }
        let ring = self.rings.get_with((function.to_owned(), incarnation), || {
            Arc::new(Mutex::new(VecDeque::new()))
        });
        let mut ring = ring.lock().expect("log ring lock");
        if ring.len() == ENTRIES_PER_FUNCTION {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The recent logs of a function, oldest first.
    pub fn recent(&self, function: &str, incarnation: u64) -> Vec<LogEntry> {
        self.rings
            .get(&(function.to_owned(), incarnation))
            .map(|r| r.lock().expect("log ring lock").iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a function's logs (when it is deleted).
    pub fn forget(&self, function: &str, incarnation: u64) {
        self.rings.invalidate(&(function.to_owned(), incarnation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log: &str) -> LogEntry {
        LogEntry {
            request_id: "r".into(),
            version: 1,
            time: 0,
            outcome: "ok".into(),
            duration_ms: 1.0,
            log: log.into(),
        }
    }

    #[test]
    fn rings_are_bounded_and_keep_tails() {
        let book = LogBook::default();
        for i in 0..(ENTRIES_PER_FUNCTION + 5) {
            book.push("f", 1, entry(&i.to_string()));
        }
        assert!(book.recent("f", 2).is_empty(), "another incarnation");
        let recent = book.recent("f", 1);
        assert_eq!(recent.len(), ENTRIES_PER_FUNCTION);
        assert_eq!(recent[0].log, "5");
        book.push("g", 1, entry(&"é".repeat(BYTES_PER_ENTRY)));
        let g = book.recent("g", 1);
        assert!(g[0].log.len() <= BYTES_PER_ENTRY && g[0].log.ends_with('é'));
        book.forget("f", 1);
        assert!(book.recent("f", 1).is_empty());
    }
}
