//! The Redis Streams queue backend, against a real `redis-server` each test starts on its own
//! port (AOF on, fsync always): jobs through the inline lane and through workers, a Redis
//! restart, a worker killed mid-job, a job that kills its worker every time, cancellation.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wafer_e2e::jobs::{
    a_flood_leaves_room_for_another_tenant, get_job, kill_a_worker_mid_job, status, submit,
    wait_status, wait_workers,
};
use wafer_e2e::{RedisServer, TestServer, redis_command};

/// A server whose queue is `redis`, with `extra` lines in its `[jobs]` table.
fn server(redis: &RedisServer, jobs: &str) -> TestServer {
    TestServer::start_with_config(&format!(
        "[queue]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"t\"\n\n[jobs]\n{jobs}\n",
        redis.url()
    ))
}

#[test]
fn jobs_run_through_redis_streams_inline_and_on_workers() {
    let redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 1\nworker_idle_ms = 500\nworker_concurrency = 2",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 60000}));
    s.deploy_as(&key, "quick", "echo", json!({"timeout_ms": 1000}));
    // Neither has run yet: their timeouts pick the lanes.
    let fast = submit(&s, &key, json!({"function": "quick", "input": "f"}));
    let slow = submit(
        &s,
        &key,
        json!({"function": "echo", "input": "w", "timeout_ms": 60000}),
    );
    let fast = get_job(&s, &key, fast["id"].as_str().unwrap(), "20s");
    let slow = get_job(&s, &key, slow["id"].as_str().unwrap(), "20s");
    assert_eq!(
        (fast["status"].as_str(), fast["route"].as_str()),
        (Some("succeeded"), Some("inline")),
        "{fast}"
    );
    assert_eq!(
        (slow["status"].as_str(), slow["route"].as_str()),
        (Some("succeeded"), Some("worker")),
        "{slow}"
    );
    // The queue is Redis's: a stream per tenant and lane, emptied as jobs are acked; no
    // embedded file.
    assert!(!s.data_dir().join("queue.redb").exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_command(redis.port, &["XLEN", "t:lane:default:t:acme"]).unwrap() != ":0\r\n" {
        assert!(Instant::now() < deadline, "the acked entry stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        redis_command(redis.port, &["HLEN", "t:index"]).unwrap(),
        ":0\r\n"
    );
    // Many jobs at once: each exactly once.
    let ids: Vec<String> = (0..30)
        .map(|i| {
            submit(
                &s,
                &key,
                json!({"function": "echo", "input": i, "timeout_ms": 60000}),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let done = get_job(&s, &key, id, "30s");
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
        let r = s
            .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
            .send()
            .unwrap();
        assert_eq!(r.json::<Value>().unwrap(), json!(i));
    }
    wait_workers(&s, 0);
}

#[test]
fn through_redis_one_tenant_s_flood_leaves_room_for_another_tenant_s_jobs() {
    let redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 1\nworker_concurrency = 4\ntenant_share_percent = 50",
    );
    a_flood_leaves_room_for_another_tenant(&s);
}

#[test]
fn a_redis_restart_loses_no_accepted_job() {
    let mut redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 0\ninline_concurrency = 1\nlease_ms = 1000",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({}));
    let running = submit(&s, &key, json!({"function": "nap", "input": 1000}));
    let running = running["id"].as_str().unwrap().to_owned();
    wait_status(&s, &key, &running, "running");
    let queued: Vec<String> = (0..5)
        .map(|_| {
            submit(&s, &key, json!({"function": "nap", "input": 10}))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // Redis dies with everything it acknowledged on disk, and comes back.
    redis.kill();
    // Meanwhile a submission cannot be queued: refused, not accepted and lost.
    let retry = || {
        s.with_key(&key, Method::POST, "/v1/jobs")
            .header("idempotency-key", "while-down")
            .json(&json!({"function": "nap", "input": 10}))
            .send()
            .unwrap()
    };
    let r = retry();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    redis.restart();
    // The retry the 503 invites is a new job, not a replay of one that never was.
    let r = retry();
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let again: Value = r.json().unwrap();
    assert_eq!(
        get_job(&s, &key, again["id"].as_str().unwrap(), "30s")["status"],
        "succeeded"
    );
    for id in std::iter::once(&running).chain(&queued) {
        let done = get_job(&s, &key, id, "30s");
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    // The refused submission left nothing waiting.
    let waiting: Value = s
        .with_key(&key, Method::GET, "/v1/jobs?status=queued")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(waiting["jobs"].as_array().unwrap().len(), 0, "{waiting}");
}

#[test]
fn a_worker_killed_mid_job_is_taken_over_through_redis() {
    let redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 1\nworker_concurrency = 1\nworker_idle_ms = 400\nlease_ms = 1000",
    );
    let (done, _) = kill_a_worker_mid_job(&s);
    assert_eq!(done["route"], "worker");
}

#[test]
fn a_job_that_kills_its_worker_every_time_is_dead_lettered_by_redis() {
    let redis = RedisServer::start();
    let s = TestServer::start_with(
        &format!(
            "[queue]\nbackend = \"redis\"\nurl = \"{}\"\n\n[jobs]\nworkers = 1\nworker_idle_ms = 400\nlease_ms = 400\n",
            redis.url()
        ),
        &[("WAFER_CRASH_AT", "worker-running")],
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 60000}));
    let job = submit(
        &s,
        &key,
        json!({"function": "echo", "input": 1, "timeout_ms": 60000}),
    );
    let dead = get_job(&s, &key, job["id"].as_str().unwrap(), "30s");
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["error"]["deliveries"], 3);
    assert_eq!(
        redis_command(redis.port, &["XLEN", "wafer:lane:default:t:acme"]).unwrap(),
        ":0\r\n"
    );
}

#[test]
fn cancelling_through_redis_stops_a_running_job_and_drops_a_queued_one() {
    let redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 1\nworker_concurrency = 1\nworker_idle_ms = 2000",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({"timeout_ms": 60000}));
    let running = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 30000, "timeout_ms": 60000}),
    );
    let running = running["id"].as_str().unwrap();
    wait_status(&s, &key, running, "running");
    let queued = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 1, "timeout_ms": 60000}),
    );
    let queued = queued["id"].as_str().unwrap();
    for id in [queued, running] {
        let r = s
            .with_key(&key, Method::DELETE, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let started = Instant::now();
    let next = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 1, "timeout_ms": 60000}),
    );
    let next = get_job(&s, &key, next["id"].as_str().unwrap(), "20s");
    assert_eq!(next["status"], "succeeded", "{next}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(get_job(&s, &key, queued, "0")["attempts"], 0);
    assert_eq!(status(&s)["queues"]["default"], 0);
}

#[test]
fn entries_that_are_not_jobs_are_dead_lettered_and_counted_and_the_lane_goes_on() {
    let redis = RedisServer::start();
    let s = server(&redis, "");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "quick", "echo", json!({"timeout_ms": 1000}));
    // Whoever can write to the Redis puts entries that are not jobs first in a tenant's
    // stream of the fast lane (and names the tenant in the lane's set).
    redis_command(redis.port, &["SADD", "t:lane:fast:tenants", "acme"]).unwrap();
    for fields in [["job", "not json"], ["other", "1"]] {
        redis_command(
            redis.port,
            &["XADD", "t:lane:fast:t:acme", "*", fields[0], fields[1]],
        )
        .unwrap();
    }
    let job = submit(&s, &key, json!({"function": "quick", "input": "after"}));
    let done = get_job(&s, &key, job["id"].as_str().unwrap(), "20s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        wafer_e2e::metric(&s.metrics(), "wafer_queue_corrupt_entries"),
        2
    );
    assert_eq!(
        redis_command(redis.port, &["XLEN", "t:dead-letter"]).unwrap(),
        ":2\r\n"
    );
    let dead = redis_command(redis.port, &["XRANGE", "t:dead-letter", "-", "+"]).unwrap();
    assert!(dead.contains("not json"), "{dead}");
    assert!(dead.contains("no job field"), "{dead}");
    // Nothing is left in the lane once the job is acked.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_command(redis.port, &["XLEN", "t:lane:fast:t:acme"]).unwrap() != ":0\r\n" {
        assert!(Instant::now() < deadline, "entries stay in the lane");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The idle time (ms) of the one pending entry of `stream`, if there is one.
fn pending_idle_ms(port: u16, stream: &str) -> Option<u64> {
    let reply = redis_command(port, &["XPENDING", stream, "runners", "-", "+", "10"])?;
    // *1 *4 $id $consumer :idle :deliveries
    let ints: Vec<u64> = reply
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    ints.first().copied()
}

#[test]
fn a_stale_worker_s_finish_and_ack_are_refused_after_another_finished_the_job() {
    let redis = RedisServer::start();
    let s = server(
        &redis,
        "workers = 2\nworker_concurrency = 1\nworker_idle_ms = 1500\nlease_ms = 1000",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({"timeout_ms": 60000}));
    let job = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 1500, "timeout_ms": 60000}),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    wait_status(&s, &key, &id, "running");
    let stale = wafer_e2e::jobs::worker_pids(&s);
    assert_eq!(stale.len(), 1);
    let stale = stale[0];
    // SAFETY: signals to our server's child.
    unsafe { libc::kill(stale, libc::SIGSTOP) };
    // Its lease runs out (Redis says so), then new work brings a second worker, which takes
    // the job over and finishes it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_idle_ms(redis.port, "t:lane:default:t:acme").is_none_or(|idle| idle < 1000) {
        assert!(
            Instant::now() < deadline,
            "the stopped worker's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 1, "timeout_ms": 60000}),
    );
    let done = get_job(&s, &key, &id, "30s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        get_job(&s, &key, other["id"].as_str().unwrap(), "30s")["status"],
        "succeeded"
    );
    // The stopped worker goes on; it then idles and exits.
    unsafe { libc::kill(stale, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while wafer_e2e::jobs::worker_pids(&s).contains(&stale) {
        assert!(
            Instant::now() < deadline,
            "the resumed worker never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The stale worker is refused, as its log (the server's stderr) says: either its first
    // heartbeat after the pause is refused and it stops the guest, or its guest ended first
    // and its finish and ack are refused. Which comes first is the scheduler's choice.
    let log = s.log();
    let stopped = log.contains("the job was cancelled or delivered again: stopped");
    let refused = log.contains("this run's end was not kept")
        && log.contains("the delivery is no longer this worker's");
    assert!(stopped || refused, "{log}");
    let after = get_job(&s, &key, &id, "0");
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["attempts"], 2);
    assert_eq!(
        after["timings"], done["timings"],
        "one result: the first end"
    );
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "awake\n");
    assert_eq!(
        redis_command(redis.port, &["XLEN", "t:lane:default:t:acme"]).unwrap(),
        ":0\r\n"
    );
    assert_eq!(pending_idle_ms(redis.port, "t:lane:default:t:acme"), None);
}
