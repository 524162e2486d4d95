//! Where work runs: each function version keeps a duration estimate learned from its runs
//! (the 95th percentile of its latest runs), and together with its declared `class` and
//! timeout that estimate picks a job's lane — fast and default lanes for short work, the long
//! lane (dedicated runners) for long work — and tells a synchronous call whose runs take
//! longer than the inline budget to become a job instead of holding its connection.

use crate::config::JobsConfig;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use wafer_core::{JobClass, Lane};

/// Runs remembered per version.
const SAMPLES: usize = 64;

/// A version, as estimates know it: function name, incarnation, version number.
pub type VersionKey = (String, u64, u32);

/// Recent run durations per version.
pub struct Estimates {
    versions: moka::sync::Cache<VersionKey, Arc<Mutex<VecDeque<u64>>>>,
}

impl Default for Estimates {
    fn default() -> Self {
        Self {
            versions: moka::sync::Cache::new(100_000),
        }
    }
}

impl Estimates {
    /// Records one run of `ms` milliseconds.
    pub fn record(&self, key: VersionKey, ms: u64) {
        let ring = self.versions.get_with(key, || {
            Arc::new(Mutex::new(VecDeque::with_capacity(SAMPLES)))
        });
        let mut ring = ring.lock().expect("estimate ring");
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(ms);
    }

    /// The 95th percentile of the recent runs, and how many there were; None before any.
    pub fn p95(&self, key: &VersionKey) -> Option<(u64, usize)> {
        let ring = self.versions.get(key)?;
        let mut runs: Vec<u64> = ring
            .lock()
            .expect("estimate ring")
            .iter()
            .copied()
            .collect();
        if runs.is_empty() {
            return None;
        }
        runs.sort_unstable();
        let rank = (runs.len() * 95).div_ceil(100).max(1) - 1;
        Some((runs[rank], runs.len()))
    }
}

/// A job's lane and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The lane.
    pub lane: Lane,
    /// Why, in words, recorded on the job.
    pub reason: String,
}

/// The lane of a job of a version with `class` and `estimate` (p95 and runs) that may run
/// for `timeout_ms`. Without runs to go by, the timeout stands in for the estimate.
pub fn plan(
    cfg: &JobsConfig,
    class: Option<JobClass>,
    estimate: Option<(u64, usize)>,
    timeout_ms: u64,
) -> Plan {
    if class == Some(JobClass::Long) {
        return Plan {
            lane: Lane::Long,
            reason: "the function's class is long".into(),
        };
    }
    let (ms, basis) = match estimate {
        Some((p95, runs)) => (p95, format!("p95 of its last {runs} runs is {p95} ms")),
        None => (
            timeout_ms,
            format!("no runs yet; its timeout is {timeout_ms} ms"),
        ),
    };
    if class != Some(JobClass::Short) && ms > cfg.long_lane_ms {
        Plan {
            lane: Lane::Long,
            reason: format!("{basis}, above the long lane's {} ms", cfg.long_lane_ms),
        }
    } else if ms <= cfg.fast_lane_ms {
        Plan {
            lane: Lane::Fast,
            reason: format!("{basis}, within the fast lane's {} ms", cfg.fast_lane_ms),
        }
    } else {
        let class_note = if class == Some(JobClass::Short) {
            "; its class is short"
        } else {
            ""
        };
        Plan {
            lane: Lane::Default,
            reason: format!(
                "{basis}, above the fast lane's {} ms{class_note}",
                cfg.fast_lane_ms
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_the_95th_percentile_of_recent_runs() {
        let e = Estimates::default();
        let k: VersionKey = ("f".into(), 1, 1);
        assert_eq!(e.p95(&k), None);
        for ms in 1..=100 {
            e.record(k.clone(), ms);
        }
        // Only the last 64 runs (37..=100) count.
        assert_eq!(e.p95(&k), Some((97, 64)));
        let one: VersionKey = ("g".into(), 1, 1);
        e.record(one.clone(), 40);
        assert_eq!(e.p95(&one), Some((40, 1)));
    }

    #[test]
    fn plans_follow_class_then_estimate_then_timeout() {
        let cfg = JobsConfig::default();
        let lane = |class, est, timeout| plan(&cfg, class, est, timeout).lane;
        assert_eq!(lane(None, None, 1_000), Lane::Fast);
        assert_eq!(lane(None, None, 30_000), Lane::Default);
        assert_eq!(lane(None, None, 600_000), Lane::Long);
        // Measured runs beat the timeout.
        assert_eq!(lane(None, Some((200, 10)), 600_000), Lane::Fast);
        assert_eq!(lane(None, Some((120_000, 10)), 300_000), Lane::Long);
        assert_eq!(lane(Some(JobClass::Long), Some((5, 10)), 1_000), Lane::Long);
        assert_eq!(
            lane(Some(JobClass::Short), Some((120_000, 10)), 300_000),
            Lane::Default
        );
        let p = plan(&cfg, None, Some((120_000, 10)), 300_000);
        assert!(p.reason.contains("p95 of its last 10 runs"), "{}", p.reason);
    }
}
