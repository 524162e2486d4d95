//! The job queue on Redis Streams, for more than one server or runners on other machines.
//!
//! Each tenant has a stream per lane (`<prefix>:lane:<lane>:t:<tenant>`) read by one consumer
//! group, and a set per lane (`<prefix>:lane:<lane>:tenants`) names the tenants with jobs
//! there. A job is an entry; an index hash (`<prefix>:index`) maps job ids to their entries,
//! so enqueueing is idempotent and a job can be cancelled. A claim is one script: of the
//! tenants below their share of the lane (pending entries not idle for a lease), it serves
//! the one holding fewest, ties going to the one served least recently
//! (`<prefix>:lane:<lane>:served`); within a tenant, an entry whose holder stopped
//! heartbeating for a lease is taken back first (XCLAIM), else a new one is read
//! (XREADGROUP). The delivery count Redis keeps per pending entry decides when a job is
//! dead-lettered. Heartbeats reset the entry's idle time (XCLAIM … JUSTID) and the ack (XACK,
//! then XDEL) happens only after the result is stored, both only for the consumer and
//! delivery that still hold the entry, checked in one script so they cannot race with a
//! re-delivery. Enqueues and acks push a token on `<prefix>:lane:<lane>:wake`, which blocked
//! claims wait on (BLPOP). The scripts touch keys they derive, so the queue needs one Redis
//! (or a primary), not Redis Cluster.
//!
//! An entry that is not a job (damaged, or written by something else) is moved to the
//! dead-letter stream (`<prefix>:dead-letter`, the newest 10 000 kept) and counted, so it
//! neither blocks the lane nor vanishes unseen.
//!
//! Durability is Redis's: with AOF (`appendonly yes`, `appendfsync always`) no enqueued job
//! is lost to a restart of Redis.

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wafer_core::TenantId;
use wafer_core::queue::{Claim, Claimed, JobId, JobQueue, Lane, LaneShares, QueueError, QueuedJob};

fn backend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("redis: {e}"))
}

const GROUP: &str = "runners";

/// Adds a job unless its id is indexed already. KEYS: index, the tenant's stream, the lane's
/// tenant set, the lane's wake list; ARGV: job id, payload, tenant, group.
const ENQUEUE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[4], '0', 'MKSTREAM')
end
local eid = redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], KEYS[2] .. '|' .. eid)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 63)
return 1
";

/// Claims fairly across a lane's tenants. KEYS: the lane's tenant set, served hash, clock,
/// wake list; ARGV: the lane's stream prefix, group, consumer, lease (ms), share. Returns
/// nil, or {stream, entry, deliveries} where entry is {id, fields} (nil when the entry was
/// deleted under its pending record).
const CLAIM: &str = r"
local share = tonumber(ARGV[5])
local best, best_held, best_served, best_stale
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = ARGV[1] .. t
  local len = redis.call('XLEN', s)
  if len == 0 then
    redis.call('SREM', KEYS[1], t)
    redis.call('HDEL', KEYS[2], t)
    redis.call('DEL', s)
  else
    local ok, summary = pcall(redis.call, 'XPENDING', s, ARGV[2])
    if not ok then
      redis.call('XGROUP', 'CREATE', s, ARGV[2], '0')
      summary = {0}
    end
    local pending = tonumber(summary[1])
    local stale = {}
    if pending > 0 then
      stale = redis.call('XPENDING', s, ARGV[2], 'IDLE', ARGV[4], '-', '+', pending)
    end
    local held = pending - #stale
    if held < share and (len > pending or #stale > 0) then
      local served = tonumber(redis.call('HGET', KEYS[2], t) or '0')
      if best == nil or held < best_held or (held == best_held and served < best_served) then
        best, best_held, best_served, best_stale = t, held, served, stale[1]
      end
    end
  end
end
if best == nil then return nil end
redis.call('HSET', KEYS[2], best, redis.call('INCR', KEYS[3]))
local s = ARGV[1] .. best
if best_stale then
  local got = redis.call('XCLAIM', s, ARGV[2], ARGV[3], 0, best_stale[1])
  return {s, got[1] or {best_stale[1]}, tonumber(best_stale[4]) + 1}
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', 1, 'STREAMS', s, '>')
if not r then return nil end
return {s, r[1][2][1], 1}
";

/// Jobs in a lane: the lengths of its tenants' streams. KEYS: the lane's tenant set; ARGV:
/// the lane's stream prefix.
const LEN: &str = r"
local n = 0
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('XLEN', ARGV[1] .. t)
end
return n
";

/// Heartbeats, releases or acks an entry, only for the consumer and delivery that hold it.
/// KEYS: the stream, index, the lane's wake list; ARGV: group, entry id, consumer, delivery,
/// mode, job id, lease (ms), release delay (ms).
const HELD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then return 0 end
if ARGV[5] == 'heartbeat' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
elseif ARGV[5] == 'release' then
  local idle = math.max(0, tonumber(ARGV[7]) - tonumber(ARGV[8]))
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', idle,
    'RETRYCOUNT', math.max(0, tonumber(ARGV[4]) - 1), 'JUSTID')
else
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[6])
  if redis.call('XLEN', KEYS[1]) > 0 then
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('LTRIM', KEYS[3], 0, 63)
  end
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
    shares: LaneShares,
    enqueue: Script,
    claim: Script,
    len: Script,
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
    /// times without an ack is dead-lettered; a tenant holds at most its `shares` of a lane.
    pub async fn connect(
        url: &str,
        prefix: &str,
        max_deliveries: u32,
        shares: LaneShares,
    ) -> Result<Self, QueueError> {
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
            shares,
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            len: Script::new(LEN),
            held: Script::new(HELD),
            remove: Script::new(REMOVE),
            corrupt: AtomicU64::new(0),
        };
        Ok(q)
    }

    /// A key of `lane`'s: `tenants`, `served`, `clock` or `wake`.
    fn lane_key(&self, lane: Lane, what: &str) -> String {
        format!("{}:lane:{}:{what}", self.prefix, lane.as_str())
    }

    /// The prefix of `lane`'s tenant streams.
    fn tenant_streams(&self, lane: Lane) -> String {
        format!("{}:lane:{}:t:", self.prefix, lane.as_str())
    }

    /// The stream of `tenant`'s jobs in `lane`.
    fn stream(&self, lane: Lane, tenant: &TenantId) -> String {
        format!("{}{}", self.tenant_streams(lane), tenant.as_str())
    }

    fn index(&self) -> String {
        format!("{}:index", self.prefix)
    }

    fn dead_letters(&self) -> String {
        format!("{}:dead-letter", self.prefix)
    }

    /// Moves an entry that is not a job from `stream` of `lane` to the dead-letter stream
    /// (with why, and what it held), and counts it.
    async fn bury_corrupt(&self, lane: Lane, stream: &str, c: Corrupt) -> Result<(), QueueError> {
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
            .arg(stream)
            .arg(GROUP)
            .arg(&c.eid)
            .cmd("XDEL")
            .arg(stream)
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
        stream: &str,
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
                    .arg(stream)
                    .arg(GROUP)
                    .arg(&eid)
                    .cmd("XDEL")
                    .arg(stream)
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

    /// One claim (the script): a job, a dead letter or a buried entry; None when no tenant
    /// below its share has a job waiting.
    async fn claim_once(&self, lane: Lane, lease: Duration) -> Result<Option<Step>, QueueError> {
        let v: Value = self
            .claim
            .key(self.lane_key(lane, "tenants"))
            .key(self.lane_key(lane, "served"))
            .key(self.lane_key(lane, "clock"))
            .arg(self.tenant_streams(lane))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(lease.as_millis() as u64)
            .arg(self.shares.of(lane))
            .invoke_async(&mut self.con())
            .await
            .map_err(backend)?;
        let Some(parts) = items(&v) else {
            return Ok(None);
        };
        let bad = || QueueError::Storage("redis: malformed claim reply".into());
        let stream = parts.first().and_then(text).ok_or_else(bad)?;
        let entry = parts.get(1).ok_or_else(bad)?;
        let count = parts.get(2).and_then(int).ok_or_else(bad)?.max(1) as u32;
        let (eid, job) = match parse_entry(entry)? {
            Ok(found) => found,
            Err(c) => {
                self.bury_corrupt(lane, &stream, c).await?;
                return Ok(Some(Step::Buried));
            }
        };
        self.delivered(&stream, eid, job, count)
            .await
            .map(|c| Some(Step::Got(c)))
    }

    /// Waits up to `wait` for an enqueue or an ack in `lane` (a token on its wake list).
    async fn await_wake(&self, lane: Lane, wait: Duration) -> Result<(), QueueError> {
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
        let secs = wait.as_secs_f64().max(0.001);
        let _: Value = tokio::time::timeout(
            wait + Duration::from_secs(5),
            redis::cmd("BLPOP")
                .arg(self.lane_key(lane, "wake"))
                .arg(format!("{secs:.3}"))
                .query_async(&mut con),
        )
        .await
        .map_err(|_| backend("a blocking read did not return"))?
        .map_err(backend)?;
        self.blocking.lock().await.push(con);
        Ok(())
    }

    async fn run_held(
        &self,
        claim: &Claim,
        mode: &str,
        lease: Duration,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        let Some((eid, consumer)) = claim.receipt().split_once('|') else {
            return Ok(false);
        };
        let done: i64 = self
            .held
            .key(self.stream(claim.job.lane, &claim.job.tenant))
            .key(self.index())
            .key(self.lane_key(claim.job.lane, "wake"))
            .arg(GROUP)
            .arg(eid)
            .arg(consumer)
            .arg(claim.delivery)
            .arg(mode)
            .arg(claim.job.id.as_str())
            .arg(lease.as_millis() as u64)
            .arg(delay.as_millis() as u64)
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
            .key(self.stream(job.lane, &job.tenant))
            .key(self.lane_key(job.lane, "tenants"))
            .key(self.lane_key(job.lane, "wake"))
            .arg(job.id.as_str())
            .arg(payload)
            .arg(job.tenant.as_str())
            .arg(GROUP)
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
        let mut waited = false;
        for _ in 0..MAX_CORRUPT_PER_CLAIM {
            match self.claim_once(lane, lease).await? {
                Some(Step::Got(c)) => return Ok(Some(c)),
                Some(Step::Buried) => continue,
                None if waited || wait.is_zero() => return Ok(None),
                None => {
                    self.await_wake(lane, wait).await?;
                    waited = true;
                }
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

    async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, QueueError> {
        self.run_held(claim, "heartbeat", lease, Duration::ZERO)
            .await
    }

    async fn release(
        &self,
        claim: &Claim,
        lease: Duration,
        delay: Duration,
    ) -> Result<bool, QueueError> {
        self.run_held(claim, "release", lease, delay).await
    }

    async fn ack(&self, claim: &Claim) -> Result<bool, QueueError> {
        self.run_held(claim, "ack", Duration::ZERO, Duration::ZERO)
            .await
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
        let n: u64 = self
            .len
            .key(self.lane_key(lane, "tenants"))
            .arg(self.tenant_streams(lane))
            .invoke_async(&mut self.con())
            .await
            .map_err(backend)?;
        Ok(n)
    }
}
