//! The job queue: which jobs wait to run, in which lane, and who is running them.
//!
//! A queue only holds deliveries; a job's record (status, result, timings) lives with the
//! metadata. The contract is the one Redis Streams with a consumer group gives, so that backend
//! fits behind the same trait: [`JobQueue::claim`] hands the oldest waiting job of a lane to
//! one runner under a lease (XREADGROUP), and also re-delivers a job whose lease ran out
//! because its runner stopped heartbeating (XAUTOCLAIM); [`JobQueue::heartbeat`] extends the
//! lease; [`JobQueue::ack`] removes the job once its result is stored (XACK), and only for the
//! claim that still holds it, so a runner that lost its lease cannot ack a re-delivery. A job
//! delivered `max_deliveries` times without an ack is dead-lettered instead of delivered again.
//!
//! [`EmbeddedJobQueue`] keeps the queue in a redb file: a job that was enqueued survives a
//! restart or a kill -9 of the process.

use crate::names::TenantId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Failures of a queue backend.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend failed.
    #[error("job queue error: {0}")]
    Storage(String),
}

fn storage<E: Into<redb::Error>>(e: E) -> QueueError {
    QueueError::Storage(e.into().to_string())
}

/// A job's id: unguessable, so knowing one id tells nothing about another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(String);

impl JobId {
    /// A new random id (`job_` and 32 hex digits).
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(format!("job_{}", hex::encode(bytes)))
    }

    /// Parses an id given by a client.
    pub fn parse(s: &str) -> Option<Self> {
        let hexpart = s.strip_prefix("job_")?;
        (hexpart.len() == 32
            && hexpart
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| Self(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a job waits: lanes have their own runners and concurrency, so a flood of long jobs
/// never delays short ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Jobs expected to finish within a few seconds.
    Fast,
    /// Everything else that runs on workers.
    Default,
    /// Long jobs, on dedicated runners.
    Long,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Lane; 3] = [Lane::Fast, Lane::Default, Lane::Long];

    /// The lowercase name used in the API and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Fast => "fast",
            Lane::Default => "default",
            Lane::Long => "long",
        }
    }

    /// Parses a lane's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }

    fn index(self) -> u8 {
        match self {
            Lane::Fast => 0,
            Lane::Default => 1,
            Lane::Long => 2,
        }
    }
}

/// A job as the queue knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedJob {
    /// The job.
    pub id: JobId,
    /// Its owner.
    pub tenant: TenantId,
    /// Its lane.
    pub lane: Lane,
}

/// A job handed to one runner, held under a lease. It travels to runners in other processes
/// (which heartbeat and ack through the server), so it serializes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The job.
    pub job: QueuedJob,
    /// How many times it has been delivered, this time included.
    pub delivery: u32,
    /// Identifies this delivery to its backend: heartbeats and the ack present it.
    receipt: String,
}

impl Claim {
    /// A claim of `job`'s delivery number `delivery`, with the backend's `receipt` for it
    /// (opaque to everyone but the backend that made it).
    pub fn new(job: QueuedJob, delivery: u32, receipt: String) -> Self {
        Self {
            job,
            delivery,
            receipt,
        }
    }

    /// The backend's receipt for this delivery.
    pub fn receipt(&self) -> &str {
        &self.receipt
    }

    /// The embedded queue's receipt: the entry's sequence number and the lease token.
    fn seq_token(&self) -> Option<(u64, u64)> {
        let (seq, token) = self.receipt.split_once('.')?;
        Some((seq.parse().ok()?, token.parse().ok()?))
    }
}

/// What [`JobQueue::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Claimed {
    /// A job to run.
    Job(Claim),
    /// A job delivered too often without an ack, now removed from the queue: its record is
    /// to be marked dead with the reason.
    Dead { job: QueuedJob, deliveries: u32 },
}

/// How many of a lane's jobs one tenant may hold (leased) at once, per lane: the tenant's
/// share. A claim skips a tenant at its share and, among the others, serves the one holding
/// the fewest, so one tenant's flood leaves room for everyone else's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneShares {
    /// The fast lane's share.
    pub fast: u32,
    /// The default lane's share.
    pub default: u32,
    /// The long lane's share.
    pub long: u32,
}

impl LaneShares {
    /// No tenant is held back: every share is unbounded.
    pub const UNBOUNDED: LaneShares = LaneShares {
        fast: u32::MAX,
        default: u32::MAX,
        long: u32::MAX,
    };

    /// The share of `lane` (at least one).
    pub fn of(&self, lane: Lane) -> u32 {
        match lane {
            Lane::Fast => self.fast,
            Lane::Default => self.default,
            Lane::Long => self.long,
        }
        .max(1)
    }
}

/// A queue of jobs per lane, with leases and re-delivery.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Adds a job at the end of its lane, unless it is queued already; durable once this
    /// returns.
    async fn enqueue(&self, job: QueuedJob) -> Result<(), QueueError>;
    /// A job of `lane` that nobody holds (or whose lease ran out), leased to the caller for
    /// `lease`; None when there is none. Fair across tenants: a tenant holding its share of
    /// the lane is skipped, and of the others the one holding fewest jobs is served (first
    /// in, first out within a tenant).
    async fn claim(&self, lane: Lane, lease: Duration) -> Result<Option<Claimed>, QueueError>;
    /// Like [`JobQueue::claim`], but a backend that can wait for an enqueue (a blocking
    /// read) waits up to `wait` for one; the default does not wait.
    async fn claim_wait(
        &self,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claimed>, QueueError> {
        let _ = wait;
        self.claim(lane, lease).await
    }
    /// Whether [`JobQueue::claim_wait`] waits for enqueues (otherwise callers wait for a
    /// signal of their own).
    fn blocks(&self) -> bool {
        false
    }
    /// Extends the lease of `claim`; false when it was lost (expired and re-delivered, acked
    /// or cancelled).
    async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, QueueError>;
    /// Gives the job of `claim` back without running it (its runner could not admit it now):
    /// it may be claimed again after `delay`, and this delivery does not count towards
    /// `max_deliveries`. `lease` is the lease claims of the lane are made with. False when
    /// the claim no longer holds it.
    async fn release(
        &self,
        claim: &Claim,
        lease: Duration,
        delay: Duration,
    ) -> Result<bool, QueueError>;
    /// Removes the job of `claim` after its result is stored; false when the claim no longer
    /// holds it.
    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError>;
    /// Removes a job whatever its state; false when it was not queued.
    async fn cancel(&self, id: &JobId) -> Result<bool, QueueError>;
    /// Jobs in `lane`, waiting or running.
    async fn len(&self, lane: Lane) -> Result<u64, QueueError>;
    /// Entries found not to be jobs and moved aside (dead-lettered) by this process.
    fn corrupt_entries(&self) -> u64 {
        0
    }
}

/// Entries by (lane, sequence): a lane is read in order.
const ENTRIES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("queue_entries");
/// Job id → (lane, sequence), to find a job to cancel.
const BY_ID: TableDefinition<&str, (u8, u64)> = TableDefinition::new("queue_by_id");
/// The next sequence number.
const COUNTER: TableDefinition<&str, u64> = TableDefinition::new("queue_counter");

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    job: QueuedJob,
    deliveries: u32,
    /// The current lease: its token and when it ends (Unix milliseconds).
    lease: Option<(u64, u64)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One tenant's entries in one lane, as the table holds them.
#[derive(Default)]
struct TenantEntries {
    /// Entries without a lease, by sequence.
    waiting: BTreeSet<u64>,
    /// Entries with a lease (held until then, or released to wait until then): sequence →
    /// the lease's end, Unix milliseconds.
    leased: BTreeMap<u64, u64>,
}

impl TenantEntries {
    fn remove(&mut self, seq: u64) {
        self.waiting.remove(&seq);
        self.leased.remove(&seq);
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.leased.is_empty()
    }
}

/// The queue's entries by lane and tenant, kept in memory beside the table so a claim looks
/// at each tenant's few leases instead of reading the whole lane. Changed by the writes that
/// change the table, on the writer thread, in their order; a batch that was not written makes
/// it stale, and the next claim builds it again from the table.
#[derive(Default)]
struct Index {
    stale: bool,
    lanes: HashMap<u8, HashMap<TenantId, TenantEntries>>,
}

impl Index {
    /// Built from the entries table.
    fn build(t: &impl ReadableTable<(u8, u64), &'static [u8]>) -> Result<Self, QueueError> {
        let mut index = Self::default();
        for item in t.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let (lane, seq) = k.value();
            let entry = decode(v.value())?;
            index.put(
                lane,
                &entry.job.tenant,
                seq,
                entry.lease.map(|(_, until)| until),
            );
        }
        Ok(index)
    }

    /// Records the entry `seq` of `tenant` in `lane`: waiting, or leased until `lease`.
    fn put(&mut self, lane: u8, tenant: &TenantId, seq: u64, lease: Option<u64>) {
        let e = self
            .lanes
            .entry(lane)
            .or_default()
            .entry(tenant.clone())
            .or_default();
        e.remove(seq);
        match lease {
            Some(until) => e.leased.insert(seq, until),
            None => e.waiting.insert(seq).then_some(0),
        };
    }

    /// Forgets the entry `seq` of `tenant` in `lane`.
    fn remove(&mut self, lane: u8, tenant: &TenantId, seq: u64) {
        if let Some(tenants) = self.lanes.get_mut(&lane)
            && let Some(e) = tenants.get_mut(tenant)
        {
            e.remove(seq);
            if e.is_empty() {
                tenants.remove(tenant);
            }
        }
    }

    /// The entry a claim of `lane` takes at `now`: the oldest waiting one of the tenant
    /// holding the fewest leases there, among tenants below `share`.
    fn next(&self, lane: u8, share: u32, now: u64) -> Option<u64> {
        self.lanes
            .get(&lane)?
            .values()
            .filter_map(|e| {
                let held = e.leased.values().filter(|until| **until >= now).count() as u32;
                if held >= share {
                    return None;
                }
                // A lease that ran out leaves its entry waiting again.
                let lapsed = e
                    .leased
                    .iter()
                    .filter(|(_, until)| **until < now)
                    .map(|(seq, _)| *seq)
                    .min();
                let oldest = e.waiting.first().copied().into_iter().chain(lapsed).min()?;
                Some((held, oldest))
            })
            .min()
            .map(|(_, seq)| seq)
    }
}

/// The embedded, durable queue: tables in a redb database of the data directory.
#[derive(Clone)]
pub struct EmbeddedJobQueue {
    db: Arc<Database>,
    writer: crate::batch::BatchWriter,
    index: Arc<std::sync::Mutex<Index>>,
    max_deliveries: u32,
    shares: LaneShares,
}

impl EmbeddedJobQueue {
    /// Opens or creates the queue in `path`; a job delivered `max_deliveries` times without an
    /// ack is dead-lettered; a tenant holds at most its `shares` of each lane.
    pub fn open(
        path: impl AsRef<Path>,
        max_deliveries: u32,
        shares: LaneShares,
    ) -> Result<Self, QueueError> {
        let db = Database::create(path.as_ref()).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.open_table(BY_ID).map_err(storage)?;
        txn.open_table(COUNTER).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let index = {
            let txn = db.begin_read().map_err(storage)?;
            Index::build(&txn.open_table(ENTRIES).map_err(storage)?)?
        };
        let index = Arc::new(std::sync::Mutex::new(index));
        let stale = index.clone();
        let db = Arc::new(db);
        Ok(Self {
            writer: crate::batch::BatchWriter::with_failure_hook(
                db.clone(),
                "queue",
                Box::new(move || stale.lock().expect("queue index").stale = true),
            ),
            db,
            index,
            max_deliveries: max_deliveries.max(1),
            shares,
        })
    }

    /// Ends every lease, so jobs that were running are delivered again at once. Only right
    /// when every runner that held a lease is gone: the server calls it at start, as the
    /// runners of the embedded queue are its own children, which die with it.
    pub async fn release_leases(&self) -> Result<u64, QueueError> {
        let index = self.index.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(ENTRIES).map_err(storage)?;
            let mut held = Vec::new();
            for item in t.iter().map_err(storage)? {
                let (k, v) = item.map_err(storage)?;
                let entry = decode(v.value())?;
                if entry.lease.is_some() {
                    held.push((k.value(), entry));
                }
            }
            let released = held.len() as u64;
            let mut index = index.lock().expect("queue index");
            for (key, mut entry) in held {
                entry.lease = None;
                t.insert(key, encode(&entry).as_slice()).map_err(storage)?;
                index.put(key.0, &entry.job.tenant, key.1, None);
            }
            Ok(released)
        })
        .await
    }

    async fn write<R, F>(&self, f: F) -> Result<R, QueueError>
    where
        R: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<R, QueueError> + Send + 'static,
    {
        self.writer.write(QueueError::Storage, f).await
    }
}

fn decode(b: &[u8]) -> Result<Entry, QueueError> {
    serde_json::from_slice(b).map_err(|e| QueueError::Storage(format!("corrupt entry: {e}")))
}

fn encode(e: &Entry) -> Vec<u8> {
    serde_json::to_vec(e).expect("entries serialize")
}

/// Applies `f` to the entry of `claim` if the claim still holds it; false otherwise.
fn with_held(
    txn: &redb::WriteTransaction,
    claim: &Claim,
    f: impl FnOnce(&mut redb::Table<(u8, u64), &[u8]>, Entry) -> Result<(), QueueError>,
) -> Result<bool, QueueError> {
    let mut t = txn.open_table(ENTRIES).map_err(storage)?;
    let Some((seq, lease_token)) = claim.seq_token() else {
        return Ok(false);
    };
    let key = (claim.job.lane.index(), seq);
    let entry = match t.get(key).map_err(storage)? {
        Some(v) => decode(v.value())?,
        None => return Ok(false),
    };
    if !matches!(entry.lease, Some((token, until)) if token == lease_token && until >= now_ms()) {
        return Ok(false);
    }
    f(&mut t, entry)?;
    Ok(true)
}

#[async_trait::async_trait]
impl JobQueue for EmbeddedJobQueue {
    async fn enqueue(&self, job: QueuedJob) -> Result<(), QueueError> {
        let index = self.index.clone();
        self.write(move |txn| {
            if txn
                .open_table(BY_ID)
                .map_err(storage)?
                .get(job.id.as_str())
                .map_err(storage)?
                .is_some()
            {
                return Ok(());
            }
            let mut counter = txn.open_table(COUNTER).map_err(storage)?;
            let seq = counter
                .get("next")
                .map_err(storage)?
                .map_or(0, |v| v.value());
            counter.insert("next", seq + 1).map_err(storage)?;
            let key = (job.lane.index(), seq);
            txn.open_table(BY_ID)
                .map_err(storage)?
                .insert(job.id.as_str(), key)
                .map_err(storage)?;
            let entry = Entry {
                job,
                deliveries: 0,
                lease: None,
            };
            txn.open_table(ENTRIES)
                .map_err(storage)?
                .insert(key, encode(&entry).as_slice())
                .map_err(storage)?;
            index
                .lock()
                .expect("queue index")
                .put(key.0, &entry.job.tenant, key.1, None);
            Ok(())
        })
        .await
    }

    async fn claim(&self, lane: Lane, lease: Duration) -> Result<Option<Claimed>, QueueError> {
        let max = self.max_deliveries;
        let share = self.shares.of(lane);
        let index = self.index.clone();
        self.write(move |txn| {
            let mut t = txn.open_table(ENTRIES).map_err(storage)?;
            let mut index = index.lock().expect("queue index");
            if index.stale {
                *index = Index::build(&t)?;
            }
            let now = now_ms();
            let lane_index = lane.index();
            let Some(seq) = index.next(lane_index, share, now) else {
                return Ok(None);
            };
            let Some(mut entry) = t
                .get((lane_index, seq))
                .map_err(storage)?
                .map(|v| decode(v.value()))
                .transpose()?
            else {
                // Not in the table: the index is off; the next claim rebuilds it.
                index.stale = true;
                return Ok(None);
            };
            if entry.deliveries >= max {
                t.remove((lane_index, seq)).map_err(storage)?;
                txn.open_table(BY_ID)
                    .map_err(storage)?
                    .remove(entry.job.id.as_str())
                    .map_err(storage)?;
                index.remove(lane_index, &entry.job.tenant, seq);
                return Ok(Some(Claimed::Dead {
                    job: entry.job,
                    deliveries: entry.deliveries,
                }));
            }
            let token: u64 = rand::random();
            let until = now + lease.as_millis() as u64;
            entry.deliveries += 1;
            entry.lease = Some((token, until));
            t.insert((lane_index, seq), encode(&entry).as_slice())
                .map_err(storage)?;
            index.put(lane_index, &entry.job.tenant, seq, Some(until));
            Ok(Some(Claimed::Job(Claim::new(
                entry.job,
                entry.deliveries,
                format!("{seq}.{token}"),
            ))))
        })
        .await
    }

    async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, QueueError> {
        let claim = claim.clone();
        let index = self.index.clone();
        self.write(move |txn| {
            let Some((seq, token)) = claim.seq_token() else {
                return Ok(false);
            };
            with_held(txn, &claim, |t, mut entry| {
                let until = now_ms() + lease.as_millis() as u64;
                entry.lease = Some((token, until));
                let lane = claim.job.lane.index();
                t.insert((lane, seq), encode(&entry).as_slice())
                    .map_err(storage)?;
                index
                    .lock()
                    .expect("queue index")
                    .put(lane, &entry.job.tenant, seq, Some(until));
                Ok(())
            })
        })
        .await
    }

    async fn release(
        &self,
        claim: &Claim,
        _lease: Duration,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let claim = claim.clone();
        let index = self.index.clone();
        self.write(move |txn| {
            let Some((seq, _)) = claim.seq_token() else {
                return Ok(false);
            };
            with_held(txn, &claim, |t, mut entry| {
                // Nobody holds token 0: the entry waits out `delay`, then anyone may claim it.
                let until = now_ms() + delay.as_millis() as u64;
                entry.lease = Some((0, until));
                entry.deliveries = entry.deliveries.saturating_sub(1);
                let lane = claim.job.lane.index();
                t.insert((lane, seq), encode(&entry).as_slice())
                    .map_err(storage)?;
                index
                    .lock()
                    .expect("queue index")
                    .put(lane, &entry.job.tenant, seq, Some(until));
                Ok(())
            })
        })
        .await
    }

    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError> {
        let claim = claim.clone();
        let index = self.index.clone();
        self.write(move |txn| {
            let Some((seq, _)) = claim.seq_token() else {
                return Ok(false);
            };
            let held = with_held(txn, &claim, |t, entry| {
                let lane = claim.job.lane.index();
                t.remove((lane, seq)).map_err(storage)?;
                index
                    .lock()
                    .expect("queue index")
                    .remove(lane, &entry.job.tenant, seq);
                Ok(())
            })?;
            if held {
                txn.open_table(BY_ID)
                    .map_err(storage)?
                    .remove(claim.job.id.as_str())
                    .map_err(storage)?;
            }
            Ok(held)
        })
        .await
    }

    async fn cancel(&self, id: &JobId) -> Result<bool, QueueError> {
        let id = id.clone();
        let index = self.index.clone();
        self.write(move |txn| {
            let mut by_id = txn.open_table(BY_ID).map_err(storage)?;
            let Some(key) = by_id
                .remove(id.as_str())
                .map_err(storage)?
                .map(|v| v.value())
            else {
                return Ok(false);
            };
            let removed = txn
                .open_table(ENTRIES)
                .map_err(storage)?
                .remove(key)
                .map_err(storage)?
                .map(|v| decode(v.value()).ok());
            let mut index = index.lock().expect("queue index");
            match removed {
                Some(Some(entry)) => index.remove(key.0, &entry.job.tenant, key.1),
                // An entry that does not read: the index is built again from the table.
                Some(None) => index.stale = true,
                None => {}
            }
            Ok(true)
        })
        .await
    }

    async fn len(&self, lane: Lane) -> Result<u64, QueueError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ENTRIES).map_err(storage)?;
        let n = t
            .range((lane.index(), 0)..=(lane.index(), u64::MAX))
            .map_err(storage)?
            .count();
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(lane: Lane) -> QueuedJob {
        QueuedJob {
            id: JobId::generate(),
            tenant: TenantId::new("t").unwrap(),
            lane,
        }
    }

    fn open(dir: &tempfile::TempDir) -> EmbeddedJobQueue {
        EmbeddedJobQueue::open(dir.path().join("q.redb"), 3, LaneShares::UNBOUNDED).unwrap()
    }

    fn job_of(c: Option<Claimed>) -> Claim {
        match c {
            Some(Claimed::Job(c)) => c,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn lanes_are_first_in_first_out_and_apart() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        let (a, b, long) = (job(Lane::Fast), job(Lane::Fast), job(Lane::Long));
        q.enqueue(a.clone()).await.unwrap();
        q.enqueue(long.clone()).await.unwrap();
        q.enqueue(b.clone()).await.unwrap();
        assert_eq!(job_of(q.claim(Lane::Fast, LEASE).await.unwrap()).job, a);
        assert_eq!(job_of(q.claim(Lane::Fast, LEASE).await.unwrap()).job, b);
        assert_eq!(
            q.claim(Lane::Fast, LEASE).await.unwrap(),
            None,
            "both are held"
        );
        assert_eq!(q.claim(Lane::Default, LEASE).await.unwrap(), None);
        assert_eq!(job_of(q.claim(Lane::Long, LEASE).await.unwrap()).job, long);
        assert_eq!(q.len(Lane::Fast).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_acked_job_is_gone_and_a_lost_lease_cannot_ack() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        q.enqueue(job(Lane::Default)).await.unwrap();
        let first = job_of(q.claim(Lane::Default, Duration::ZERO).await.unwrap());
        std::thread::sleep(Duration::from_millis(5));
        // The lease ran out: the job is delivered again, to another runner.
        let second = job_of(q.claim(Lane::Default, LEASE).await.unwrap());
        assert_eq!(
            (first.job.id.clone(), second.delivery),
            (second.job.id.clone(), 2)
        );
        assert!(
            !q.heartbeat(&first, LEASE).await.unwrap(),
            "the first lost its lease"
        );
        assert!(!q.ack(&first).await.unwrap(), "a stale runner cannot ack");
        assert!(q.heartbeat(&second, LEASE).await.unwrap());
        assert!(q.ack(&second).await.unwrap());
        assert!(!q.ack(&second).await.unwrap(), "acked once");
        assert_eq!(q.len(Lane::Default).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_job_delivered_too_often_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        let j = job(Lane::Default);
        q.enqueue(j.clone()).await.unwrap();
        for delivery in 1..=3 {
            let c = job_of(q.claim(Lane::Default, Duration::ZERO).await.unwrap());
            assert_eq!(c.delivery, delivery);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            q.claim(Lane::Default, LEASE).await.unwrap(),
            Some(Claimed::Dead {
                job: j,
                deliveries: 3
            })
        );
        assert_eq!(q.claim(Lane::Default, LEASE).await.unwrap(), None);
    }

    #[tokio::test]
    async fn jobs_survive_a_reopen_and_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, cancelled) = (job(Lane::Fast), job(Lane::Fast));
        {
            let q = open(&dir);
            q.enqueue(cancelled.clone()).await.unwrap();
            q.enqueue(kept.clone()).await.unwrap();
        }
        let q = open(&dir);
        assert!(q.cancel(&cancelled.id).await.unwrap());
        assert!(!q.cancel(&cancelled.id).await.unwrap());
        let c = job_of(q.claim(Lane::Fast, LEASE).await.unwrap());
        assert_eq!(c.job, kept);
        // Cancelling a running job takes it from its runner too.
        assert!(q.cancel(&kept.id).await.unwrap());
        assert!(!q.heartbeat(&c, LEASE).await.unwrap());
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_and_released_leases_deliver_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(&dir);
        let j = job(Lane::Default);
        q.enqueue(j.clone()).await.unwrap();
        q.enqueue(j.clone()).await.unwrap();
        assert_eq!(q.len(Lane::Default).await.unwrap(), 1);
        let held = job_of(q.claim(Lane::Default, LEASE).await.unwrap());
        // Enqueueing a running job again neither duplicates it nor ends its lease.
        q.enqueue(j.clone()).await.unwrap();
        assert_eq!(q.claim(Lane::Default, LEASE).await.unwrap(), None);
        assert_eq!(q.release_leases().await.unwrap(), 1);
        let again = job_of(q.claim(Lane::Default, LEASE).await.unwrap());
        assert_eq!((again.job, again.delivery), (held.job.clone(), 2));
        assert!(!q.ack(&held).await.unwrap(), "the released claim is stale");
    }

    fn job_for(tenant: &str, lane: Lane) -> QueuedJob {
        QueuedJob {
            id: JobId::generate(),
            tenant: TenantId::new(tenant).unwrap(),
            lane,
        }
    }

    /// The index as plain data: per (lane, tenant), the waiting and the leased entries.
    type Snapshot = BTreeMap<(u8, String), (Vec<u64>, Vec<(u64, u64)>)>;

    fn snapshot(index: &Index) -> Snapshot {
        let mut out = Snapshot::new();
        for (lane, tenants) in &index.lanes {
            for (tenant, e) in tenants {
                let entry = (
                    e.waiting.iter().copied().collect(),
                    e.leased.iter().map(|(s, u)| (*s, *u)).collect(),
                );
                out.insert((*lane, tenant.as_str().to_owned()), entry);
            }
        }
        out
    }

    fn built(q: &EmbeddedJobQueue) -> Snapshot {
        let txn = q.db.begin_read().unwrap();
        snapshot(&Index::build(&txn.open_table(ENTRIES).unwrap()).unwrap())
    }

    #[tokio::test]
    async fn the_claims_index_matches_the_table_after_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let shares = LaneShares {
            fast: 2,
            default: 2,
            long: 1,
        };
        let q = EmbeddedJobQueue::open(dir.path().join("q.redb"), 2, shares).unwrap();
        let check = |q: &EmbeddedJobQueue, step: &str| {
            let live = snapshot(&q.index.lock().unwrap());
            assert_eq!(live, built(q), "after {step}");
        };
        let mut ids = Vec::new();
        for i in 0..12 {
            let lane = [Lane::Default, Lane::Long][i % 2];
            let job = job_for(["a", "b", "c"][i % 3], lane);
            ids.push(job.id.clone());
            q.enqueue(job).await.unwrap();
        }
        check(&q, "enqueues");
        let mut claims = Vec::new();
        while let Some(c) = q.claim(Lane::Default, LEASE).await.unwrap() {
            claims.push(job_of(Some(c)));
        }
        assert_eq!(claims.len(), 6, "two for each tenant, its share");
        check(&q, "claims");
        assert!(q.heartbeat(&claims[0], LEASE * 2).await.unwrap());
        check(&q, "a heartbeat");
        assert!(q.release(&claims[1], LEASE, Duration::ZERO).await.unwrap());
        check(&q, "a release");
        assert!(q.ack(&claims[2]).await.unwrap());
        check(&q, "an ack");
        assert!(q.cancel(&claims[3].job.id).await.unwrap());
        assert!(q.cancel(&ids[1]).await.unwrap());
        check(&q, "cancels");
        // A lease that runs out lets its entry be claimed again, by the index as by the table.
        let short = job_of(q.claim(Lane::Long, Duration::from_millis(1)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = job_of(q.claim(Lane::Long, LEASE).await.unwrap());
        assert_eq!(again.job.id, short.job.id);
        assert_eq!(again.delivery, 2);
        check(&q, "a lease that ran out");
        // Delivered too often: dead-lettered and gone from both.
        let mut dead = None;
        for _ in 0..10 {
            match q.claim(Lane::Long, Duration::from_millis(1)).await.unwrap() {
                Some(Claimed::Dead { job, .. }) => {
                    dead = Some(job);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(3)).await,
            }
        }
        assert!(dead.is_some(), "a job was dead-lettered");
        check(&q, "a dead letter");
        assert!(q.release_leases().await.unwrap() > 0);
        check(&q, "releasing every lease");
        drop(q);
        let q = EmbeddedJobQueue::open(dir.path().join("q.redb"), 2, shares).unwrap();
        check(&q, "a reopen");
    }

    #[tokio::test]
    async fn claims_are_fair_across_tenants_and_stop_at_a_tenant_s_share() {
        let dir = tempfile::tempdir().unwrap();
        let shares = LaneShares {
            fast: 2,
            default: 2,
            long: 1,
        };
        let q = EmbeddedJobQueue::open(dir.path().join("q.redb"), 3, shares).unwrap();
        let flood: Vec<QueuedJob> = (0..4).map(|_| job_for("a", Lane::Default)).collect();
        for j in &flood {
            q.enqueue(j.clone()).await.unwrap();
        }
        let late: Vec<QueuedJob> = (0..3).map(|_| job_for("b", Lane::Default)).collect();
        for j in &late {
            q.enqueue(j.clone()).await.unwrap();
        }
        let mut order = Vec::new();
        while let Some(c) = q.claim(Lane::Default, LEASE).await.unwrap() {
            order.push(job_of(Some(c)));
        }
        let ids: Vec<&JobId> = order.iter().map(|c| &c.job.id).collect();
        assert_eq!(
            ids,
            [&flood[0].id, &late[0].id, &flood[1].id, &late[1].id],
            "turns alternate, and each tenant stops at its share of 2"
        );
        // A job that ends frees its tenant's place.
        assert!(q.ack(&order[0]).await.unwrap());
        let next = job_of(q.claim(Lane::Default, LEASE).await.unwrap());
        assert_eq!(next.job.id, flood[2].id);
        // Released jobs wait out their delay and do not count as a delivery.
        assert!(
            q.release(&next, LEASE, Duration::from_millis(50))
                .await
                .unwrap()
        );
        assert!(!q.ack(&next).await.unwrap(), "a released claim is over");
        assert_eq!(q.claim(Lane::Default, LEASE).await.unwrap(), None);
        std::thread::sleep(Duration::from_millis(60));
        let again = job_of(q.claim(Lane::Default, LEASE).await.unwrap());
        assert_eq!(
            (again.job.id.clone(), again.delivery),
            (flood[2].id.clone(), 1)
        );
    }

    #[test]
    fn job_ids_are_random_and_parsed_strictly() {
        let (a, b) = (JobId::generate(), JobId::generate());
        assert_ne!(a, b);
        assert_eq!(JobId::parse(a.as_str()), Some(a));
        for bad in [
            "job_",
            "job_XYZ",
            "task_00000000000000000000000000000000",
            "job_../../x",
        ] {
            assert_eq!(JobId::parse(bad), None, "{bad}");
        }
    }
}
