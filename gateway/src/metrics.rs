//! Prometheus metrics of invocations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the invocation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Function name.
    pub function: String,
    /// `ok` or the problem slug.
    pub outcome: String,
}

/// Labels of per-function metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// Function name.
    pub function: String,
}

type HistogramFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;

/// The gateway's metrics, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily,
    cold_starts: Family<FunctionLabels, Counter>,
    fuel: Family<FunctionLabels, Counter>,
    in_flight: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    jobs_submitted: Counter,
    jobs_finished: Family<StatusLabels, Counter>,
    runners: Family<KindLabels, Gauge>,
    cache_lookups: Family<ResultLabels, Counter>,
    /// The lookup counters by result, made once: counting a hit allocates nothing.
    cache_lookup_counters: [(&'static str, Counter); 4],
    cache_stored_bytes: Counter,
    cache_evictions: Family<CauseLabels, Counter>,
    cache_shared: Family<ResultLabels, Counter>,
    cache_bytes: Gauge,
    queue_corrupt: Gauge,
    vm_accel: Family<AccelLabels, Gauge>,
}

/// Labels of the VM acceleration gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccelLabels {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// How it was chosen: `configured`, `ok`, `no-device`, `no-access`, `no-progress`.
    pub probe: String,
}

/// Labels of the cache eviction counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// `size` (room for newer answers) or `expired`.
    pub cause: String,
}

/// Labels of the cache counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `hit`, `miss`, `stale` or `bypass` (lookups); for the shared level also `error`,
    /// `invalid`, `oversized`, `stored` and `store_error`.
    pub result: String,
}

/// Labels of the runner gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `worker` or `dedicated`.
    pub kind: String,
}

/// Labels of the finished-jobs counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// How the job ended.
    pub status: String,
}

fn duration_histogram() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wafer");
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        let fuel = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function and outcome",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Wall-clock duration of invocations",
            duration.clone(),
        );
        registry.register(
            "cold_starts",
            "Invocations that loaded compiled code",
            cold_starts.clone(),
        );
        registry.register(
            "fuel_consumed",
            "Fuel consumed by invocations",
            fuel.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "invocations_in_flight",
            "Invocations running now",
            in_flight.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept because the connection cap was reached",
            connections_refused.clone(),
        );
        let jobs_submitted = Counter::default();
        registry.register(
            "jobs_submitted",
            "Jobs accepted (202)",
            jobs_submitted.clone(),
        );
        let jobs_finished = Family::<StatusLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that ran to an end, by status",
            jobs_finished.clone(),
        );
        let runners = Family::<KindLabels, Gauge>::default();
        registry.register(
            "runners_alive",
            "Runner processes alive, by kind (worker, dedicated)",
            runners.clone(),
        );
        for kind in ["worker", "dedicated"] {
            runners
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .set(0);
        }
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Response cache lookups by result (hit, miss, stale, bypass)",
            cache_lookups.clone(),
        );
        let cache_lookup_counters = ["hit", "miss", "stale", "bypass"].map(|r| {
            let c = cache_lookups
                .get_or_create(&ResultLabels { result: r.into() })
                .clone();
            (r, c)
        });
        let cache_stored_bytes = Counter::default();
        registry.register(
            "cache_stored_bytes",
            "Bytes of answers stored in the response cache",
            cache_stored_bytes.clone(),
        );
        let cache_evictions = Family::<CauseLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Answers removed from the response cache, by cause (size, expired)",
            cache_evictions.clone(),
        );
        let cache_shared = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_shared",
            "Shared (Redis) cache operations by result (hit, miss, error, invalid, oversized, \
             stored, store_error)",
            cache_shared.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes the in-process response cache holds",
            cache_bytes.clone(),
        );
        let queue_corrupt = Gauge::default();
        registry.register(
            "queue_corrupt_entries",
            "Queue entries this server found not to be jobs and moved to the dead-letter stream",
            queue_corrupt.clone(),
        );
        let vm_accel = Family::<AccelLabels, Gauge>::default();
        registry.register(
            "vm_accel",
            "Acceleration of the vm provisioner's VMs (1 for the one chosen) and how it was chosen",
            vm_accel.clone(),
        );
        Self {
            registry,
            invocations,
            duration,
            cold_starts,
            fuel,
            in_flight,
            connections,
            connections_refused,
            jobs_submitted,
            jobs_finished,
            runners,
            cache_lookups,
            cache_lookup_counters,
            cache_stored_bytes,
            cache_evictions,
            cache_shared,
            cache_bytes,
            queue_corrupt,
            vm_accel,
        }
    }
}

impl Metrics {
    /// Records one finished invocation.
    pub fn record(&self, function: &str, outcome: &str, seconds: f64, fuel: u64, cold: bool) {
        let f = FunctionLabels {
            function: function.to_owned(),
        };
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.duration.get_or_create(&f).observe(seconds);
        if fuel > 0 {
            self.fuel.get_or_create(&f).inc_by(fuel);
        }
        if cold {
            self.cold_starts.get_or_create(&f).inc();
        }
    }

    /// Counts an accepted job.
    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// Counts a job that ran to an end.
    pub fn job_finished(&self, status: &str) {
        self.jobs_finished
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .inc();
    }

    /// Sets how many runner processes of `kind` are alive.
    pub fn set_runners(&self, kind: &str, n: i64) {
        self.runners
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .set(n);
    }

    /// Records the acceleration the `vm` provisioner's VMs get (a gauge at 1).
    pub fn set_vm_accel(&self, accel: &str, probe: &str) {
        self.vm_accel
            .get_or_create(&AccelLabels {
                accel: accel.to_owned(),
                probe: probe.to_owned(),
            })
            .set(1);
    }

    /// Counts a response-cache lookup.
    pub fn cache_event(&self, result: &str) {
        if let Some((_, c)) = self
            .cache_lookup_counters
            .iter()
            .find(|(r, _)| *r == result)
        {
            c.inc();
            return;
        }
        self.cache_lookups
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts an answer removed from the response cache.
    pub fn cache_eviction(&self, cause: &str) {
        self.cache_evictions
            .get_or_create(&CauseLabels {
                cause: cause.to_owned(),
            })
            .inc();
    }

    /// Counts an operation of the shared cache level by its result.
    pub fn cache_shared(&self, result: &str) {
        self.cache_shared
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Sets how many queue entries were found not to be jobs.
    pub fn set_queue_corrupt(&self, n: u64) {
        self.queue_corrupt.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the bytes the in-process response cache holds.
    pub fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts bytes stored in the response cache.
    pub fn cache_stored(&self, bytes: u64) {
        self.cache_stored_bytes.inc_by(bytes);
    }

    /// Counts an invocation as running until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts a client connection as open until the guard is dropped.
    pub fn connection_opened(&self) -> InFlight {
        self.connections.inc();
        InFlight(self.connections.clone())
    }

    /// Counts a connection closed at once because the cap was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

/// Decrements a gauge (invocations or connections in flight) when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.record("hello", "ok", 0.001, 42, true);
        let text = m.render();
        assert!(
            text.contains("wafer_invocations_total{function=\"hello\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wafer_cold_starts_total{function=\"hello\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wafer_fuel_consumed_total{function=\"hello\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("wafer_invocation_duration_seconds_bucket"),
            "{text}"
        );
    }
}
