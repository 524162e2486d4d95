//! Helpers for job tests: submit, read and wait for jobs; find worker processes.

use crate::TestServer;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Submits a job as `key`; panics unless it is accepted. Returns the job.
pub fn submit(s: &TestServer, key: &str, body: Value) -> Value {
    let r = s
        .with_key(key, Method::POST, "/v1/jobs")
        .json(&body)
        .send()
        .unwrap();
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().unwrap();
    assert_eq!(status, 202, "{v}");
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/jobs/{}", v["id"].as_str().unwrap()).as_str())
    );
    v
}

/// The job, after waiting up to `wait` for it to end.
pub fn get_job(s: &TestServer, key: &str, id: &str, wait: &str) -> Value {
    let r = s
        .with_key(key, Method::GET, &format!("/v1/jobs/{id}?wait={wait}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Polls (bounded) until the job is in `status`.
pub fn wait_status(s: &TestServer, key: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_job(s, key, id, "200ms");
        if v["status"] == status {
            return v;
        }
        assert!(Instant::now() < deadline, "job never became {status}: {v}");
    }
}

/// `GET /v1/admin/status` of the server.
pub fn status(s: &TestServer) -> Value {
    s.admin(Method::GET, "/v1/admin/status")
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Polls (bounded) until `n` workers are alive.
pub fn wait_workers(s: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(s);
        if st["runners"]["workers"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "workers never became {n}: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of the server's `wafer worker` children.
pub fn worker_pids(s: &TestServer) -> Vec<i32> {
    let mut pids = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.pid())).unwrap();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).nth(1) == Some(b"worker".as_slice()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Runs a 1.5 s nap job on the server's one worker, SIGKILLs that worker mid-job and waits
/// for the job to end elsewhere; asserts it succeeded on its second delivery with the one
/// result `awake`. Returns the ended job and the killed worker's pid.
pub fn kill_a_worker_mid_job(s: &TestServer) -> (Value, i32) {
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", serde_json::json!({"timeout_ms": 60000}));
    let job = submit(
        s,
        &key,
        serde_json::json!({"function": "nap", "input": 1500, "timeout_ms": 60000}),
    );
    let id = job["id"].as_str().unwrap();
    wait_status(s, &key, id, "running");
    let pids = worker_pids(s);
    assert_eq!(pids.len(), 1);
    // SAFETY: kill(2) of our server's child.
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let done = get_job(s, &key, id, "30s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "awake\n");
    (done, pids[0])
}

/// Tenant `flood` fills the default lane with naps of 50 s; tenant `other`'s jobs, submitted
/// after, must start within a second and end while the flood still holds its share, which
/// is half of the lane's four slots (the caller's configuration: `workers = 1`,
/// `worker_concurrency = 4`, `tenant_share_percent = 50`). The flood is cancelled at the end.
pub fn a_flood_leaves_room_for_another_tenant(s: &TestServer) {
    let a = s.tenant_key("flood");
    let b = s.tenant_key("other");
    s.deploy_as(&a, "sleepers", "nap", json!({"timeout_ms": 60000}));
    s.deploy_as(&b, "short-naps", "nap", json!({"timeout_ms": 60000}));
    let nap = |key: &str, function: &str, ms: u64| -> String {
        let job = submit(s, key, json!({"function": function, "input": ms}));
        assert_eq!(job["lane"], "default", "{job}");
        job["id"].as_str().unwrap().to_owned()
    };
    let flood: Vec<String> = (0..6).map(|_| nap(&a, "sleepers", 50_000)).collect();
    wait_status(s, &a, &flood[0], "running");
    wait_status(s, &a, &flood[1], "running");
    let others: Vec<String> = (0..2).map(|_| nap(&b, "short-naps", 50)).collect();
    for id in &others {
        let j = get_job(s, &b, id, "20s");
        assert_eq!(j["status"], "succeeded", "{j}");
        let waited = j["timings"]["wait_ms"].as_u64().unwrap();
        assert!(waited < 1000, "the other tenant's job waited {waited} ms");
    }
    let states: Vec<String> = flood
        .iter()
        .map(|id| {
            get_job(s, &a, id, "0")["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let running = states.iter().filter(|st| *st == "running").count();
    let queued = states.iter().filter(|st| *st == "queued").count();
    assert_eq!(
        (running, queued),
        (2, 4),
        "the flood holds its share only: {states:?}"
    );
    for id in &flood {
        let r = s
            .with_key(&a, Method::DELETE, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
