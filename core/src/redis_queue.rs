//! The job queue on Redis Streams, for more than one server or runners on other machines.
//!
//! Each lane is a stream (`<prefix>:lane:<lane>`) read by one consumer group. A job is an
//! entry; an index hash (`<prefix>:index`) maps job ids to their entries, so enqueueing is
//! idempotent and a job can be cancelled. Claiming takes back first an entry whose holder
//! stopped heartbeating for a lease (XAUTOCLAIM), else a new one (XREADGROUP); the delivery
//! count Redis keeps per pending entry decides when a job is dead-lettered. Heartbeats reset
//! the entry's idle time (XCLAIM … JUSTID) and the ack (XACK, then XDEL) happens only after
//! the result is stored, both only for the consumer and delivery that still hold the entry,
//! checked in one script so they cannot race with a re-delivery.
//!
//! An entry that is not a job (damaged, or written by something else) is moved to the
//! dead-letter stream (`<prefix>:dead-letter`, the newest 10 000 kept) and counted, so it
//! neither blocks the lane nor vanishes unseen.
//!
//! Durability is Redis's: with AOF (`appendonly yes`, `appendfsync always`) no enqueued job
//! is lost to a restart of Redis.

use crate::queue::{Claim, Claimed, JobId, JobQueue, Lane, QueueError, QueuedJob};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn backend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("redis: {e}"))
}

const GROUP: &str = "runners";

/// Adds a job unless its id is indexed already.
const ENQUEUE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local eid = redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], KEYS[2] .. '|' .. eid)
return 1
";

/// Heartbeats or acks an entry, only for the consumer and delivery that hold it.
const HELD: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then return 0 end
if ARGV[5] == 'heartbeat' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
else
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[6])
end
return 1
";

/// Removes a job's entry wherever it is.
const REMOVE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then return 0 end
local sep = string.find(v, '|', 1, true)
local stream = string.sub(v, 1, sep - 1)
local eid = string.sub(v, sep + 1)
redis.call('XACK', stream, ARGV[1], eid)
redis.call('XDEL', stream, eid)
redis.call('HDEL', KEYS[1], ARGV[2])
return 1
";

/// The Redis Streams queue.
pub struct RedisJobQueue {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    consumer: String,
    max_deliveries: u32,
    /// Connections for blocking reads, which must not hold up the shared one.
    blocking: tokio::sync::Mutex<Vec<MultiplexedConnection>>,
    enqueue: Script,
    held: Script,
    remove: Script,
    /// Entries that were not jobs, moved to the dead-letter stream by this process.
    corrupt: AtomicU64,
}

/// The most entries a claim moves to the dead-letter stream before it gives up for now.
const MAX_CORRUPT_PER_CLAIM: usize = 16;

/// How many dead letters the dead-letter stream keeps (about: `MAXLEN ~`).
const DEAD_LETTERS_KEPT: u64 = 10_000;

/// What one read of a stream found.
enum Step {
    /// A job (or a dead letter).
    Got(Claimed),
    /// An entry that was not a job, now in the dead-letter stream.
    Buried,
}

/// A stream entry that is not a job.
struct Corrupt {
    eid: String,
    why: String,
    raw: String,
}

impl RedisJobQueue {
    /// Connects to `url`, keeping keys under `prefix`; a job delivered `max_deliveries`
    /// times without an ack is dead-lettered. Creates the consumer groups if needed.
    pub async fn connect(url: &str, prefix: &str, max_deliveries: u32) -> Result<Self, QueueError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let manager = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5))),
            )
            .await
            .map_err(backend)?;
        let bytes: [u8; 8] = rand::random();
        let q = Self {
            client,
            manager,
            prefix: prefix.to_owned(),
            consumer: format!("{}-{}", std::process::id(), hex::encode(bytes)),
            max_deliveries: max_deliveries.max(1),
            blocking: tokio::sync::Mutex::new(Vec::new()),
            enqueue: Script::new(ENQUEUE),
            held: Script::new(HELD),
            remove: Script::new(REMOVE),
            corrupt: AtomicU64::new(0),
        };
        for lane in Lane::ALL {
            let created: Result<Value, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(q.stream(lane))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut q.manager.clone())
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.to_string().contains("BUSYGROUP") => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(q)
    }

    fn stream(&self, lane: Lane) -> String {
        format!("{}:lane:{}", self.prefix, lane.as_str())
    }

    fn index(&self) -> String {
        format!("{}:index", self.prefix)
    }

    fn dead_letters(&self) -> String {
        format!("{}:dead-letter", self.prefix)
    }

    /// Moves an entry that is not a job from `lane` to the dead-letter stream (with why, and
    /// what it held), and counts it.
    async fn bury_corrupt(&self, lane: Lane, c: Corrupt) -> Result<(), QueueError> {
        tracing::error!(lane = lane.as_str(), entry = %c.eid, why = %c.why, "a queue entry is not a job: moved to the dead-letter stream");
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(self.dead_letters())
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTERS_KEPT)
            .arg("*")
            .arg("lane")
            .arg(lane.as_str())
            .arg("entry")
            .arg(&c.eid)
            .arg("why")
            .arg(&c.why)
            .arg("raw")
            .arg(&c.raw)
            .cmd("XACK")
            .arg(self.stream(lane))
            .arg(GROUP)
            .arg(&c.eid)
            .cmd("XDEL")
            .arg(self.stream(lane))
            .arg(&c.eid)
            .query_async::<Value>(&mut self.con())
            .await
            .map_err(backend)?;
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn con(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Turns a claimed stream entry into a job or a dead letter.
    async fn delivered(
        &self,
        lane: Lane,
        eid: String,
        job: QueuedJob,
        count: u32,
    ) -> Result<Claimed, QueueError> {
        if count > self.max_deliveries {
            let removed: i64 = self
                .remove
                .key(self.index())
                .arg(GROUP)
                .arg(job.id.as_str())
                .invoke_async(&mut self.con())
                .await
                .map_err(backend)?;
            if removed == 0 {
                // An entry without its index entry (not made by this queue) goes too.
                redis::pipe()
                    .cmd("XACK")
                    .arg(self.stream(lane))
                    .arg(GROUP)
                    .arg(&eid)
                    .cmd("XDEL")
                    .arg(self.stream(lane))
                    .arg(&eid)
                    .query_async::<Value>(&mut self.con())
                    .await
                    .map_err(backend)?;
            }
            return Ok(Claimed::Dead {
                job,
                deliveries: count - 1,
            });
        }
        let receipt = format!("{eid}|{}", self.consumer);
        Ok(Claimed::Job(Claim::new(job, count, receipt)))
    }

    /// The delivery count of a pending entry.
    async fn deliveries(&self, lane: Lane, eid: &str) -> Result<u32, QueueError> {
        let v: Value = redis::cmd("XPENDING")
            .arg(self.stream(lane))
            .arg(GROUP)
            .arg(eid)
            .arg(eid)
            .arg(1)
            .query_async(&mut self.con())
            .await
            .map_err(backend)?;
        let count = items(&v)
            .and_then(|rows| rows.first())
            .and_then(items)
            .and_then(|row| row.get(3))
            .and_then(int)
            .unwrap_or(1);
        Ok(count.max(1) as u32)
    }

    /// An entry whose holder stopped heartbeating for `lease`, taken over by this consumer.
    async fn reclaim(&self, lane: Lane, lease: Duration) -> Result<Option<Step>, QueueError> {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.stream(lane))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.con())
            .await
            .map_err(backend)?;
        let Some(entry) = items(&v)
            .and_then(|r| r.get(1))
            .and_then(items)
            .and_then(|e| e.first())
        else {
            return Ok(None);
        };
        let (eid, job) = match parse_entry(entry)? {
            Ok(found) => found,
            Err(c) => {
                self.bury_corrupt(lane, c).await?;
                return Ok(Some(Step::Buried));
            }
        };
        let count = self.deliveries(lane, &eid).await?;
        self.delivered(lane, eid, job, count)
            .await
            .map(|c| Some(Step::Got(c)))
    }

    /// A new entry, waiting up to `block` for one (None: do not wait).
    async fn read_new(
        &self,
        lane: Lane,
        block: Option<Duration>,
    ) -> Result<Option<Step>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.stream(lane)).arg(">");
        let v: Value = match block {
            None => cmd.query_async(&mut self.con()).await.map_err(backend)?,
            Some(b) => {
                let mut con = match self.blocking.lock().await.pop() {
                    Some(c) => c,
                    None => self
                        .client
                        .get_multiplexed_async_connection_with_config(
                            &AsyncConnectionConfig::new()
                                .set_connection_timeout(Some(Duration::from_secs(2)))
                                .set_response_timeout(None),
                        )
                        .await
                        .map_err(backend)?,
                };
                let v = tokio::time::timeout(b + Duration::from_secs(5), cmd.query_async(&mut con))
                    .await
                    .map_err(|_| backend("a blocking read did not return"))?
                    .map_err(backend)?;
                self.blocking.lock().await.push(con);
                v
            }
        };
        let entry = streams(&v)
            .into_iter()
            .next()
            .and_then(|entries| entries.into_iter().next());
        let Some(entry) = entry else {
            return Ok(None);
        };
        let (eid, job) = match parse_entry(entry)? {
            Ok(found) => found,
            Err(c) => {
                self.bury_corrupt(lane, c).await?;
                return Ok(Some(Step::Buried));
            }
        };
        self.delivered(lane, eid, job, 1)
            .await
            .map(|c| Some(Step::Got(c)))
    }

    async fn run_held(&self, claim: &Claim, mode: &str) -> Result<bool, QueueError> {
        let Some((eid, consumer)) = claim.receipt().split_once('|') else {
            return Ok(false);
        };
        let done: i64 = self
            .held
            .key(self.stream(claim.job.lane))
            .key(self.index())
            .arg(GROUP)
            .arg(eid)
            .arg(consumer)
            .arg(claim.delivery)
            .arg(mode)
            .arg(claim.job.id.as_str())
            .invoke_async(&mut self.con())
            .await
            .map_err(backend)?;
        Ok(done == 1)
    }
}

fn items(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of each stream in an XREADGROUP reply (RESP2 arrays or RESP3 maps).
fn streams(v: &Value) -> Vec<Vec<&Value>> {
    match v {
        Value::Array(per_stream) => per_stream
            .iter()
            .filter_map(items)
            .filter_map(|pair| pair.get(1))
            .filter_map(items)
            .map(|entries| entries.iter().collect())
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(_, entries)| items(entries))
            .map(|entries| entries.iter().collect())
            .collect(),
        _ => Vec::new(),
    }
}

/// An entry `[id, [field, value, …]]` → its id and job; `Err(Corrupt)` when it has an id but
/// is not a job; an error when Redis's answer is not an entry at all.
fn parse_entry(entry: &Value) -> Result<Result<(String, QueuedJob), Corrupt>, QueueError> {
    let bad = || QueueError::Storage("redis: malformed stream entry".into());
    let parts = items(entry).ok_or_else(bad)?;
    let eid = parts.first().and_then(text).ok_or_else(bad)?;
    let corrupt = |why: String| {
        let raw: String = format!("{:?}", parts.get(1)).chars().take(4096).collect();
        Err(Corrupt {
            eid: eid.clone(),
            why,
            raw,
        })
    };
    let fields: Vec<&Value> = match parts.get(1) {
        Some(Value::Map(m)) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Some(v) => match items(v) {
            Some(f) => f.iter().collect(),
            None => return Ok(corrupt("its fields are not a list".into())),
        },
        None => return Ok(corrupt("it has no fields".into())),
    };
    let Some(payload) = fields
        .chunks(2)
        .find(|kv| kv.first().and_then(|k| text(k)).as_deref() == Some("job"))
        .and_then(|kv| kv.get(1))
        .and_then(|v| text(v))
    else {
        return Ok(corrupt("it has no job field".into()));
    };
    match serde_json::from_str(&payload) {
        Ok(job) => Ok(Ok((eid, job))),
        Err(e) => Ok(corrupt(format!("its job does not parse: {e}"))),
    }
}

#[async_trait::async_trait]
impl JobQueue for RedisJobQueue {
    async fn enqueue(&self, job: QueuedJob) -> Result<(), QueueError> {
        let payload = serde_json::to_string(&job).expect("jobs serialize");
        self.enqueue
            .key(self.index())
            .key(self.stream(job.lane))
            .arg(job.id.as_str())
            .arg(payload)
            .invoke_async::<i64>(&mut self.con())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn claim(&self, lane: Lane, lease: Duration) -> Result<Option<Claimed>, QueueError> {
        self.claim_wait(lane, lease, Duration::ZERO).await
    }

    async fn claim_wait(
        &self,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claimed>, QueueError> {
        // Entries that are not jobs are buried on the way; a claim buries a bounded number.
        for _ in 0..MAX_CORRUPT_PER_CLAIM {
            let found = match self.reclaim(lane, lease).await? {
                Some(c) => Some(c),
                None if wait.is_zero() => self.read_new(lane, None).await?,
                None => self.read_new(lane, Some(wait)).await?,
            };
            match found {
                Some(Step::Got(c)) => return Ok(Some(c)),
                Some(Step::Buried) => continue,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    fn blocks(&self) -> bool {
        true
    }

    async fn heartbeat(&self, claim: &Claim, _lease: Duration) -> Result<bool, QueueError> {
        self.run_held(claim, "heartbeat").await
    }

    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError> {
        self.run_held(claim, "ack").await
    }

    async fn cancel(&self, id: &JobId) -> Result<bool, QueueError> {
        let removed: i64 = self
            .remove
            .key(self.index())
            .arg(GROUP)
            .arg(id.as_str())
            .invoke_async(&mut self.con())
            .await
            .map_err(backend)?;
        Ok(removed == 1)
    }

    async fn len(&self, lane: Lane) -> Result<u64, QueueError> {
        let n: u64 = redis::cmd("XLEN")
            .arg(self.stream(lane))
            .query_async(&mut self.con())
            .await
            .map_err(backend)?;
        Ok(n)
    }
}
