//! Waiting on jobs: a watch channel per job that someone waits on ([`JobWatch`]), woken by
//! that job's changes only, and the count of waits under way per tenant ([`WaitSlot`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use wafer_core::{JobId, TenantId};

/// The jobs someone waits on, each with a channel that counts its changes.
#[derive(Default)]
pub(crate) struct Watchers(Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>);

impl Watchers {
    pub(crate) fn watch(&self, id: &JobId) -> JobWatch {
        let mut watchers = self.0.lock().expect("watchers");
        let rx = watchers
            .entry(id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        JobWatch {
            rx: Some(rx),
            id: id.clone(),
            watchers: self.0.clone(),
        }
    }

    pub(crate) fn publish(&self, id: &JobId) {
        if let Some(tx) = self.0.lock().expect("watchers").get(id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("watchers").len()
    }
}

/// A watch on one job's changes; the job's channel goes when its last watch does.
pub struct JobWatch {
    rx: Option<watch::Receiver<u64>>,
    id: JobId,
    watchers: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
}

impl JobWatch {
    /// Waits until the job may have changed (true) or `deadline` passed (false).
    pub async fn next_change(&mut self, deadline: tokio::time::Instant) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().expect("watchers");
        drop(self.rx.take());
        if watchers
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watchers.remove(&self.id);
        }
    }
}

/// Waits under way, per tenant and in all.
#[derive(Default)]
pub(crate) struct WaitCounts {
    pub(crate) per_tenant: HashMap<TenantId, usize>,
    pub(crate) total: usize,
}

/// A wait under way, counted against its tenant's and the server's bounds until dropped.
pub struct WaitSlot {
    pub(crate) waits: Arc<Mutex<WaitCounts>>,
    pub(crate) tenant: TenantId,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut waits = self.waits.lock().expect("waits");
        if let Some(n) = waits.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                waits.per_tenant.remove(&self.tenant);
            }
            waits.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_wakes_the_watchers_of_its_job_only() {
        let w = Watchers::default();
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut on_a = w.watch(&a);
        let mut on_a_too = w.watch(&a);
        let mut on_b = w.watch(&b);
        w.publish(&a);
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(on_a.next_change(soon).await);
        assert!(on_a_too.next_change(soon).await);
        assert!(!on_b.next_change(soon).await, "b did not change");
        // A change before the wait is not missed; the channel goes with its last watch.
        w.publish(&b);
        assert!(on_b.next_change(soon).await);
        assert_eq!(w.len(), 2);
        drop((on_a, on_a_too));
        assert_eq!(w.len(), 1);
        drop(on_b);
        assert_eq!(w.len(), 0);
        w.publish(&a);
    }
}
