//! Admission of invocations: a slot in the global pool and one of the tenant's share, and the
//! invocation's memory limit reserved from the host's memory budget and from the tenant's
//! share of it (three quarters), so one tenant can never take all the memory either. All are
//! taken at once, without waiting, after the request body has arrived, so overload is refused
//! quickly instead of queueing or exhausting the host: a full host is a 503 `overloaded`, a
//! tenant at its own share a 429 `concurrency-limit`, both with `Retry-After`.

use crate::metrics::{InFlight, Metrics};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wafer_core::Problem;
use wafer_core::TenantId;

/// Most MiB the memory budget can hold (tokio semaphores count up to `usize::MAX >> 3`;
/// this is far above any machine's memory).
const MAX_BUDGET_MB: u64 = 1 << 40;

/// The admission controller.
pub struct Admission {
    slots: Arc<Semaphore>,
    per_tenant: usize,
    tenants: moka::sync::Cache<TenantId, Arc<TenantShare>>,
    memory_mb: Arc<Semaphore>,
    budget_mb: u64,
    tenant_budget_mb: u64,
    metrics: Arc<Metrics>,
}

/// One tenant's share: invocation slots and MiB of guest memory.
struct TenantShare {
    slots: Arc<Semaphore>,
    memory_mb: Arc<Semaphore>,
}

/// What an admitted invocation holds until it ends; dropping it gives everything back.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
    _tenant_slot: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    _tenant_memory: OwnedSemaphorePermit,
    _running: InFlight,
}

impl Admission {
    /// A controller for `slots` invocations at once, `per_tenant` of them for one tenant,
    /// and `budget_mb` MiB of guest memory in flight.
    pub fn new(slots: usize, per_tenant: usize, budget_mb: u64, metrics: Arc<Metrics>) -> Self {
        let budget_mb = budget_mb.clamp(1, MAX_BUDGET_MB);
        Self {
            tenant_budget_mb: (budget_mb * 3 / 4).max(1),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            per_tenant: per_tenant.max(1),
            // Idle tenants' semaphores are dropped after a while; one in use is never idle.
            tenants: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
            memory_mb: Arc::new(Semaphore::new(budget_mb as usize)),
            budget_mb,
            metrics,
        }
    }

    /// The host memory budget, MiB.
    pub fn budget_mb(&self) -> u64 {
        self.budget_mb
    }

    /// 422 `memory-over-budget` when an invocation that may use `memory_mb` MiB can never be
    /// admitted here: it needs more than one tenant's share of the memory budget.
    pub fn check_fits(&self, memory_mb: u64) -> Result<(), Problem> {
        if memory_mb <= self.tenant_budget_mb {
            return Ok(());
        }
        Err(Problem::new(
            422,
            "memory-over-budget",
            "Memory over budget",
            format!(
                "the function may use {memory_mb} MiB, more than a tenant's share of this \
                 server's memory budget ({} MiB): it can never run here; lower its memory_mb, \
                 or declare it long to run it on a runner of its own",
                self.tenant_budget_mb
            ),
        )
        .with("limit", self.tenant_budget_mb))
    }

    /// Admits one invocation of `tenant`'s function that may use up to `memory_mb` MiB.
    pub fn admit(&self, tenant: &TenantId, memory_mb: u64) -> Result<Admitted, Problem> {
        self.check_fits(memory_mb)?;
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Problem::overloaded("too many invocations in flight"))?;
        let (per_tenant, tenant_budget_mb) = (self.per_tenant, self.tenant_budget_mb);
        let share = self.tenants.get_with_by_ref(tenant, || {
            Arc::new(TenantShare {
                slots: Arc::new(Semaphore::new(per_tenant)),
                memory_mb: Arc::new(Semaphore::new(tenant_budget_mb as usize)),
            })
        });
        let tenant_slot = share.slots.clone().try_acquire_owned().map_err(|_| {
            Problem::concurrency_limit(format!(
                "this tenant's functions already have {per_tenant} invocations in flight"
            ))
        })?;
        let reserve = |pool: &Arc<Semaphore>, budget: u64| {
            u32::try_from(memory_mb)
                .ok()
                .filter(|mb| u64::from(*mb) <= budget)
                .and_then(|mb| pool.clone().try_acquire_many_owned(mb).ok())
        };
        let tenant_memory = reserve(&share.memory_mb, tenant_budget_mb).ok_or_else(|| {
            Problem::concurrency_limit(format!(
                "this tenant's invocations in flight hold its share of the host's memory \
                 budget ({tenant_budget_mb} MiB)"
            ))
            .with("memory_budget_mb", tenant_budget_mb)
        })?;
        let memory = reserve(&self.memory_mb, self.budget_mb).ok_or_else(|| {
            Problem::overloaded(format!(
                "the host's memory budget of {} MiB is taken by invocations in flight",
                self.budget_mb
            ))
            .with("memory_budget_mb", self.budget_mb)
        })?;
        Ok(Admitted {
            _slot: slot,
            _tenant_slot: tenant_slot,
            _memory: memory,
            _tenant_memory: tenant_memory,
            _running: self.metrics.in_flight(),
        })
    }
}

/// The default host memory budget: half of the machine's physical memory less `parked_mb`
/// (what idle pool slots may keep resident), but at least a quarter of it, so guests can never
/// take what the host itself, the page cache and compile workers need.
pub fn default_memory_budget_mb(parked_mb: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 4096;
    }
    let total_mb = (pages as u64).saturating_mul(page as u64) >> 20;
    (total_mb / 2).saturating_sub(parked_mb).max(total_mb / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    #[test]
    fn memory_is_reserved_and_given_back() {
        let a = Admission::new(10, 10, 1000, Arc::default());
        let first = a.admit(&tenant("a"), 600).unwrap();
        let refused = a.admit(&tenant("b"), 600).err().unwrap();
        assert_eq!(refused.status, 503);
        assert_eq!(refused.extra["memory_budget_mb"], 1000);
        let small = a.admit(&tenant("b"), 400).unwrap();
        drop(first);
        a.admit(&tenant("c"), 600).unwrap();
        drop(small);
        assert!(a.admit(&tenant("c"), 1001).is_err(), "more than the budget");
    }

    #[test]
    fn one_tenant_holds_at_most_three_quarters_of_the_memory() {
        let a = Admission::new(10, 10, 1000, Arc::default());
        let _x = a.admit(&tenant("a"), 500).unwrap();
        let refused = a.admit(&tenant("a"), 300).err().unwrap();
        assert_eq!((refused.status, refused.slug), (429, "concurrency-limit"));
        assert_eq!(refused.extra["memory_budget_mb"], 750);
        let _y = a.admit(&tenant("a"), 250).unwrap();
        let _z = a.admit(&tenant("b"), 250).unwrap();
    }

    #[test]
    fn a_tenant_cannot_take_every_slot() {
        let a = Admission::new(3, 2, 1000, Arc::default());
        let _x = a.admit(&tenant("a"), 1).unwrap();
        let _y = a.admit(&tenant("a"), 1).unwrap();
        let refused = a.admit(&tenant("a"), 1).err().unwrap();
        assert_eq!((refused.status, refused.slug), (429, "concurrency-limit"));
        let _z = a.admit(&tenant("b"), 1).unwrap();
        let refused = a.admit(&tenant("c"), 1).err().unwrap();
        assert_eq!((refused.status, refused.slug), (503, "overloaded"));
    }

    #[test]
    fn the_default_budget_is_half_the_machine() {
        let mb = default_memory_budget_mb(0);
        assert!(mb >= 64, "{mb}");
        assert_eq!(default_memory_budget_mb(256), mb - 256);
        assert_eq!(default_memory_budget_mb(u64::MAX), mb / 2);
    }
}
