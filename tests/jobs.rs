//! Jobs: asynchronous invocations through `POST /v1/jobs` and `Prefer: respond-async`, their
//! records, results, waits, event streams, cancellation, idempotency, expiry, and what a crash
//! or restart of the server does to them.

use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};
use wafer_e2e::jobs::{
    a_flood_leaves_room_for_another_tenant, get_job, kill_a_worker_mid_job, status, submit,
    wait_status, wait_workers, worker_pids,
};
use wafer_e2e::{TestServer, assert_problem, function_bytes};

#[test]
fn a_command_job_runs_and_keeps_its_record_and_result() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let job = submit(
        &s,
        &key,
        json!({"function": "echo", "input": {"load": [1, 2, 3]}}),
    );
    assert_eq!(job["status"], "queued");
    let id = job["id"].as_str().unwrap();
    assert!(id.starts_with("job_") && id.len() == 36, "{id}");
    let done = get_job(&s, &key, id, "10s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["route"], "inline");
    assert_eq!(done["lane"], "fast");
    assert_eq!(done["version"], 1);
    let t = &done["timings"];
    assert!(t["queued_at_ms"].as_u64().unwrap() <= t["started_at_ms"].as_u64().unwrap());
    assert!(t["started_at_ms"].as_u64().unwrap() <= t["finished_at_ms"].as_u64().unwrap());
    assert_eq!(done["result"]["content_type"], "application/json");

    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["x-wafer-job-status"], "succeeded");
    assert_eq!(r.json::<Value>().unwrap(), json!({"load": [1, 2, 3]}));

    // Binary input.
    let job = submit(
        &s,
        &key,
        json!({"function": "echo@1", "input_base64": "AAEC/w==", "timeout_ms": 60000}),
    );
    let id2 = job["id"].as_str().unwrap();
    // The first run taught the version's estimate: a long timeout no longer decides.
    assert_eq!(job["lane"], "fast", "{job}");
    assert!(
        job["route_reason"]
            .as_str()
            .unwrap()
            .contains("p95 of its last 1 runs"),
        "{job}"
    );
    let r = s
        .with_key(
            &key,
            Method::GET,
            &format!("/v1/jobs/{id2}/result?wait=10s"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &[0u8, 1, 2, 255]);

    // Both are listed, newest first; filters narrow the list.
    let list: Value = s
        .with_key(&key, Method::GET, "/v1/jobs?function=echo&status=succeeded")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id2, id]);
    let page: Value = s
        .with_key(&key, Method::GET, "/v1/jobs?limit=1")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let next: Value = s
        .with_key(
            &key,
            Method::GET,
            &format!("/v1/jobs?limit=1&cursor={cursor}"),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(next["jobs"][0]["id"], id);
    assert!(next["next_cursor"].is_null());
}

#[test]
fn an_http_call_with_prefer_respond_async_becomes_a_job_with_the_whole_response() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "hello", "hello", json!({}));
    let r = s
        .with_key(&key, Method::GET, "/fn/hello/greet?name=Ada")
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = r.json().unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    let r = s
        .with_key(&key, Method::GET, &format!("{location}/result?wait=10s"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.text().unwrap(), "Hello, Ada!\n");

    // Without a key there is no tenant to own the job.
    s.deploy_as(&key, "open", "hello", json!({"public": true}));
    let r = s
        .anon(Method::GET, "/fn/open")
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    // Another tenant may call a public function, but not queue jobs on it.
    let other = s.tenant_key("other");
    let r = s
        .with_key(&other, Method::GET, "/fn/open")
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_problem(r, 404, "function-not-found");
}

#[test]
fn a_failing_job_keeps_its_problem_and_stderr() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "fail", "fail", json!({}));
    let job = submit(&s, &key, json!({"function": "fail", "input": "boom"}));
    let id = job["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "10s");
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["type"],
        "https://wafer.dev/problems/nonzero-exit"
    );
    assert_eq!(done["error"]["exit_code"], 3);
    assert!(done["result"].is_null());
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-wafer-job-status"], "failed");
    assert_problem(r, 502, "nonzero-exit");
    let logs = job_logs(&s, &key, id);
    assert!(logs.contains("something went wrong: \"boom\""), "{logs}");
    // A job that traps keeps what it wrote before too.
    let job = submit(
        &s,
        &key,
        json!({"function": "fail", "input_base64": "cGFuaWM="}),
    );
    let id = job["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "10s");
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["type"],
        "https://wafer.dev/problems/unreachable"
    );
    let logs = job_logs(&s, &key, id);
    assert!(logs.contains("a deliberate panic"), "{logs}");
}

/// What job `id` wrote to stderr.
fn job_logs(s: &TestServer, key: &str, id: &str) -> String {
    s.with_key(key, Method::GET, &format!("/v1/jobs/{id}/logs"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn queued_and_running_jobs_can_be_cancelled_and_a_running_guest_stops() {
    let s = TestServer::start_with_config("[jobs]\ninline_concurrency = 1\nworkers = 0\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({"timeout_ms": 60000}));
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 60000}));
    let running = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 30000, "timeout_ms": 60000}),
    );
    let running = running["id"].as_str().unwrap();
    wait_status(&s, &key, running, "running");
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{running}/result"))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-wafer-job-status"], "running");
    assert!(r.headers().contains_key("retry-after"));
    let p = assert_problem(r, 409, "job-not-finished");
    assert_eq!(p["job_status"], "running");
    // One job at a time in this lane: the next one waits.
    let queued = submit(&s, &key, json!({"function": "echo", "input": 1}));
    let queued = queued["id"].as_str().unwrap();
    let r = s
        .with_key(&key, Method::DELETE, &format!("/v1/jobs/{queued}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "cancelled");
    assert_eq!(get_job(&s, &key, running, "0")["status"], "running");

    let r = s
        .with_key(&key, Method::DELETE, &format!("/v1/jobs/{running}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The guest is interrupted: the lane's one slot is free for the next job at once,
    // long before the 30 s nap would have ended.
    let started = Instant::now();
    let next = submit(&s, &key, json!({"function": "echo", "input": 2}));
    let next = get_job(&s, &key, next["id"].as_str().unwrap(), "20s");
    assert_eq!(next["status"], "succeeded", "{next}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(s.wait_in_flight(0));

    let cancelled = get_job(&s, &key, running, "0");
    assert_eq!(cancelled["status"], "cancelled");
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{running}/result"))
        .send()
        .unwrap();
    assert_problem(r, 409, "job-cancelled");
    let r = s
        .with_key(&key, Method::DELETE, &format!("/v1/jobs/{running}"))
        .send()
        .unwrap();
    assert_problem(r, 409, "job-ended");
    // The queued job never ran.
    assert_eq!(get_job(&s, &key, queued, "0")["attempts"], 0);
}

#[test]
fn an_idempotency_key_returns_the_same_job_and_refuses_another_request() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    let other = s.tenant_key("other");
    s.deploy_as(&key, "echo", "echo", json!({}));
    s.deploy_as(&other, "echo2", "echo", json!({}));
    let send = |k: &str, body: Value| {
        s.with_key(k, Method::POST, "/v1/jobs")
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
            .unwrap()
    };
    let first = send(&key, json!({"function": "echo", "input": 1}));
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().unwrap();
    let again = send(&key, json!({"function": "echo", "input": 1}));
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().unwrap()["id"], first["id"]);
    let different = send(&key, json!({"function": "echo", "input": 2}));
    let p = assert_problem(different, 422, "idempotency-key-reused");
    assert_eq!(p["job"], first["id"]);
    // Keys are per tenant.
    let theirs = send(&other, json!({"function": "echo2", "input": 1}));
    assert_eq!(theirs.status(), 202);
    assert_ne!(theirs.json::<Value>().unwrap()["id"], first["id"]);
    // Only one job ran.
    let list: Value = s
        .with_key(&key, Method::GET, "/v1/jobs")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

#[test]
fn an_idempotency_key_of_an_async_call_is_bound_to_its_function() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    s.deploy_as(&key, "echo-too", "echo", json!({}));
    let call = |function: &str| {
        s.with_key(&key, Method::POST, &format!("/fn/{function}"))
            .header("prefer", "respond-async")
            .header("idempotency-key", "call-7")
            .body("same body")
            .send()
            .unwrap()
    };
    let first = call("echo");
    assert_eq!(first.status(), 202);
    let first: Value = first.json().unwrap();
    let again = call("echo");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().unwrap()["id"], first["id"]);
    // The same key and body on another function is another request: refused, not the first
    // job replayed.
    let p = assert_problem(call("echo-too"), 422, "idempotency-key-reused");
    assert_eq!(p["job"], first["id"]);
}

#[test]
fn bad_submissions_and_reads_get_precise_problems() {
    let s = TestServer::start_with_config("max_request_bytes = 1024\n");
    let key = s.tenant_key("acme");
    let other = s.tenant_key("other");
    s.deploy_as(&key, "echo", "echo", json!({}));
    s.deploy_as(&other, "theirs", "echo", json!({"public": true}));
    let post = |k: &str, body: Value| {
        s.with_key(k, Method::POST, "/v1/jobs")
            .json(&body)
            .send()
            .unwrap()
    };
    assert_problem(
        post(&key, json!({"function": "nope"})),
        404,
        "function-not-found",
    );
    assert_problem(
        post(&key, json!({"function": "theirs"})),
        404,
        "function-not-found",
    );
    assert_problem(
        post(&key, json!({"function": "echo@7"})),
        404,
        "version-not-found",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "input": "x".repeat(2000)})),
        413,
        "input-too-large",
    );
    assert_problem(
        post(
            &key,
            json!({"function": "echo", "input_base64": "QUJD".repeat(400)}),
        ),
        413,
        "input-too-large",
    );
    let r = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(vec![b' '; 100_000])
        .send()
        .unwrap();
    assert_problem(r, 413, "input-too-large");
    assert_problem(
        post(
            &key,
            json!({"function": "echo", "input": 1, "input_base64": ""}),
        ),
        400,
        "invalid-input",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "input_base64": "***"})),
        400,
        "invalid-input",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "colour": "red"})),
        400,
        "invalid-json",
    );
    assert_problem(
        post(&key, json!({"function": "Bad Name"})),
        400,
        "invalid-name",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "timeout_ms": 0})),
        400,
        "invalid-timeout",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "timeout_ms": 100_000_000})),
        422,
        "timeout-too-large",
    );
    assert_problem(
        post(&key, json!({"function": "echo", "content_type": "a\nb"})),
        400,
        "invalid-content-type",
    );
    let r = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .header("idempotency-key", "")
        .json(&json!({"function": "echo"}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-idempotency-key");
    let r = s
        .anon(Method::POST, "/v1/jobs")
        .json(&json!({"function": "echo"}))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");

    // Reads: someone else's job, a malformed id, bad parameters.
    let mine = submit(&s, &key, json!({"function": "echo", "input": 1}));
    let id = mine["id"].as_str().unwrap();
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}/logs"),
        format!("/v1/jobs/{id}/events"),
    ] {
        let r = s.with_key(&other, Method::GET, &path).send().unwrap();
        assert_problem(r, 404, "job-not-found");
    }
    let r = s
        .with_key(&other, Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .unwrap();
    assert_problem(r, 404, "job-not-found");
    let r = s
        .with_key(&key, Method::GET, "/v1/jobs/job_../../x")
        .send()
        .unwrap();
    assert_problem(r, 404, "job-not-found");
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}?wait=soon"))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-wait");
    let r = s
        .with_key(&key, Method::GET, "/v1/jobs?status=sleeping")
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-status");
    let r = s
        .with_key(&key, Method::GET, "/v1/jobs?limit=0")
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-limit");
    // Nothing of that disturbed the job.
    assert_eq!(get_job(&s, &key, id, "10s")["status"], "succeeded");
}

#[test]
fn the_event_stream_reports_each_status_change_until_the_end() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({}));
    let job = submit(&s, &key, json!({"function": "nap", "input": 300}));
    let id = job["id"].as_str().unwrap();
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/events"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut statuses = Vec::new();
    // The stream ends by itself after the last status.
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            statuses.push(v["status"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses.last().map(String::as_str), Some("succeeded"));
    assert!(
        statuses.len() >= 2 && statuses.len() <= 3,
        "the current status, then each change: {statuses:?}"
    );
    let mut deduped = statuses.clone();
    deduped.dedup();
    assert_eq!(deduped, statuses, "no status twice in a row");
}

#[test]
fn ended_jobs_are_removed_when_their_time_runs_out() {
    let s = TestServer::start_with_config("[jobs]\nttl_s = 1\nsweep_interval_ms = 100\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let send = || {
        s.with_key(&key, Method::POST, "/v1/jobs")
            .header("idempotency-key", "k1")
            .json(&json!({"function": "echo", "input": 1}))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    let first = send();
    let id = first["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "10s");
    assert_eq!(done["status"], "succeeded");
    assert!(done["expires_at_ms"].as_u64().is_some());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s
            .with_key(&key, Method::GET, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the job was never removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its idempotency key went with it: the same key makes a new job.
    let second = send();
    assert_ne!(second["id"], first["id"]);
}

#[test]
fn a_kill_9_of_the_server_loses_no_accepted_job() {
    let mut s = TestServer::start_with_config("[jobs]\ninline_concurrency = 1\nworkers = 0\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({}));
    let running = submit(&s, &key, json!({"function": "nap", "input": 3000}));
    let running = running["id"].as_str().unwrap().to_owned();
    wait_status(&s, &key, &running, "running");
    let queued = submit(&s, &key, json!({"function": "nap", "input": 10}));
    let queued = queued["id"].as_str().unwrap().to_owned();
    s.kill_and_restart();
    // The job that was running runs again from the start; the queued one runs too.
    let a = get_job(&s, &key, &running, "30s");
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(a["attempts"], 2);
    let b = get_job(&s, &key, &queued, "30s");
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["attempts"], 1);
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{running}/result"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "awake\n");
}

#[test]
fn a_job_that_kills_its_runner_every_time_ends_dead_with_the_reason() {
    let crash = [("WAFER_CRASH_AT", "job-running")];
    let mut s = TestServer::start_with("", &crash);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let r = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .json(&json!({"function": "echo", "input": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Each start of the server delivers the job again, and the job takes it down.
    for delivery in 1..=3 {
        assert!(
            s.wait_for_exit().is_some(),
            "delivery {delivery} did not crash the server"
        );
        if delivery < 3 {
            s.kill_and_restart();
        }
    }
    s.set_env(&[]);
    s.kill_and_restart();
    let dead = get_job(&s, &key, &id, "10s");
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["error"]["type"], "https://wafer.dev/problems/job-dead");
    assert_eq!(dead["error"]["deliveries"], 3);
    let detail = dead["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("3 deliveries"), "{detail}");
}

#[test]
fn the_cli_runs_waits_for_and_reads_jobs() {
    let s = TestServer::start();
    s.cli_deploy("echo", "echo");
    s.cli_deploy("fail", "fail");
    let o = s.cli(&["invoke", "echo", "-d", "hello job", "--async"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("job_"), "{id}");
    let o = s.cli(&["jobs", "wait", &id, "--timeout", "30s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Not a terminal: plain lines, one per status.
    assert!(err.contains(&format!("{id} succeeded after")), "{err}");
    assert!(!err.contains('\r'), "{err:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("status:    succeeded"), "{out}");
    let o = s.cli(&["jobs", "result", &id]);
    assert!(o.status.success());
    assert_eq!(o.stdout, b"hello job");
    let o = s.cli(&["jobs", "ls"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&id) && out.contains("succeeded"), "{out}");
    let o = s.cli(&["jobs", "get", &id, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["route"], "inline");

    // A failing job: wait exits 1 and says why; logs show its stderr.
    let o = s.cli(&["invoke", "fail", "-d", "oops", "--async"]);
    let failing = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let o = s.cli(&["jobs", "wait", &failing]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("job failed"), "{err}");
    let o = s.cli(&["jobs", "logs", &failing]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("something went wrong: oops"));
    let o = s.cli(&["jobs", "result", &failing]);
    assert_eq!(o.status.code(), Some(1));
    let o = s.cli(&["jobs", "get", "not-a-job!"]);
    assert_eq!(o.status.code(), Some(2));

    // Cancel from the CLI: a long nap, cancelled while it runs.
    s.cli_deploy("nap", "nap");
    let o = s.cli(&["invoke", "nap", "-d", "30000", "--async"]);
    let napping = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let key = s.admin_key.clone();
    wait_status(&s, &key, &napping, "running");
    let o = s.cli(&["jobs", "cancel", &napping]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("cancelled {napping}")));
    let o = s.cli(&["jobs", "wait", &napping]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("job cancelled"));
    let o = s.cli(&["jobs", "cancel", &napping]);
    assert_eq!(o.status.code(), Some(1), "already ended");
}

/// Workers for the default lane; jobs estimated above 100 ms go there.
const WORKERS: &str = "[jobs]\nworkers = 1\nworker_concurrency = 1\nworker_idle_ms = 400\nlease_ms = 1500\nfast_lane_ms = 100\n";

#[test]
fn workers_start_when_jobs_wait_and_go_away_when_idle() {
    let s = TestServer::start_with_config(WORKERS);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({"timeout_ms": 60000}));
    // Nothing runs while there is no work.
    assert_eq!(status(&s)["runners"]["workers"], 0);
    assert!(worker_pids(&s).is_empty());
    assert!(
        s.metrics()
            .contains("wafer_runners_alive{kind=\"worker\"} 0")
    );
    for round in 0..2 {
        let job = submit(
            &s,
            &key,
            json!({"function": "nap", "input": 600, "timeout_ms": 60000}),
        );
        let id = job["id"].as_str().unwrap();
        assert_eq!(job["route"], "worker");
        wait_status(&s, &key, id, "running");
        assert_eq!(status(&s)["runners"]["workers"], 1, "round {round}");
        assert_eq!(worker_pids(&s).len(), 1);
        assert!(
            s.metrics()
                .contains("wafer_runners_alive{kind=\"worker\"} 1")
        );
        let done = get_job(&s, &key, id, "20s");
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["route"], "worker");
        let r = s
            .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
            .send()
            .unwrap();
        assert_eq!(r.text().unwrap(), "awake\n");
        // Idle for its idle time, the worker exits: back to zero.
        wait_workers(&s, 0);
        assert!(worker_pids(&s).is_empty());
    }
}

#[test]
fn one_tenant_s_flood_of_long_jobs_leaves_room_for_another_tenant_s_jobs() {
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 1\nworker_concurrency = 4\ntenant_share_percent = 50\n",
    );
    a_flood_leaves_room_for_another_tenant(&s);
}

#[test]
fn a_job_its_tenant_has_no_room_for_gives_its_lane_slot_to_another_tenant() {
    // One slot in the server's lanes; a tenant may have one invocation in flight.
    let s = TestServer::start_with_config(
        "max_inflight = 4\nmax_inflight_per_tenant = 1\n[jobs]\nworkers = 0\ninline_concurrency = 1\n",
    );
    let a = s.tenant_key("busy");
    let b = s.tenant_key("other");
    s.deploy_as(&a, "slow", "hello", json!({"timeout_ms": 20000}));
    s.deploy_as(&a, "quick-a", "echo", json!({"timeout_ms": 1000}));
    s.deploy_as(&b, "quick-b", "echo", json!({"timeout_ms": 1000}));
    // The busy tenant's synchronous call holds its one place for 10 s.
    let call = {
        let (url, key) = (format!("http://{}", s.addr()), a.clone());
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
                .get(format!("{url}/fn/slow?name=x&sleep_ms=10000"))
                .bearer_auth(key)
                .send()
                .unwrap()
                .status()
        })
    };
    assert!(s.wait_in_flight(1), "the call never started");
    let waiting = submit(&s, &a, json!({"function": "quick-a", "input": "a"}));
    let waiting = waiting["id"].as_str().unwrap();
    let other = submit(&s, &b, json!({"function": "quick-b", "input": "b"}));
    let other = get_job(&s, &b, other["id"].as_str().unwrap(), "5s");
    assert_eq!(other["status"], "succeeded", "{other}");
    assert!(
        !call.is_finished(),
        "the call ended before the other tenant's job ran"
    );
    let held = get_job(&s, &a, waiting, "0");
    assert_eq!(
        (held["status"].as_str(), held["attempts"].as_u64()),
        (Some("queued"), Some(0)),
        "{held}"
    );
    assert_eq!(call.join().unwrap(), 200);
    let done = get_job(&s, &a, waiting, "20s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
}

#[test]
fn a_tenant_s_jobs_and_stored_bytes_are_held_to_its_quotas() {
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 0\nmax_jobs_per_tenant = 2\nmax_job_storage_mb_per_tenant = 1\n",
    );
    let a = s.tenant_key("acme");
    let b = s.tenant_key("other");
    s.deploy_as(&a, "nap", "nap", json!({"timeout_ms": 60000}));
    s.deploy_as(&a, "echo", "echo", json!({"timeout_ms": 10000}));
    s.deploy_as(&b, "echo-b", "echo", json!({"timeout_ms": 10000}));
    let naps: Vec<String> = (0..2)
        .map(|_| {
            submit(&s, &a, json!({"function": "nap", "input": 30000}))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let over = |body: Value| {
        s.with_key(&a, Method::POST, "/v1/jobs")
            .json(&body)
            .send()
            .unwrap()
    };
    let r = over(json!({"function": "echo", "input": 1}));
    assert!(r.headers().contains_key("retry-after"));
    let p = assert_problem(r, 429, "too-many-jobs");
    assert_eq!(
        (p["limit"].as_u64(), p["jobs"].as_u64()),
        (Some(2), Some(2))
    );
    // A call answered with a job meets the same quota.
    let r = s
        .with_key(&a, Method::POST, "/fn/echo")
        .header("prefer", "respond-async")
        .body("x")
        .send()
        .unwrap();
    assert_problem(r, 429, "too-many-jobs");
    // Other tenants are not held back.
    let other = submit(&s, &b, json!({"function": "echo-b", "input": 1}));
    assert_eq!(
        get_job(&s, &b, other["id"].as_str().unwrap(), "10s")["status"],
        "succeeded"
    );
    // Ended jobs free their places; their bytes stay until they expire.
    for id in &naps {
        let r = s
            .with_key(&a, Method::DELETE, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let big = submit(
        &s,
        &a,
        json!({"function": "echo", "input": "a".repeat(700 << 10)}),
    );
    let big = get_job(&s, &a, big["id"].as_str().unwrap(), "10s");
    assert_eq!(big["status"], "succeeded", "{big}");
    let p = assert_problem(
        over(json!({"function": "echo", "input": "b".repeat(400 << 10)})),
        429,
        "job-storage-full",
    );
    assert_eq!(p["limit_bytes"], 1 << 20);
    assert!(p["stored_bytes"].as_u64().unwrap() > 700 << 10, "{p}");
    // Past the limit, nothing more fits until the kept jobs expire.
    assert_problem(
        over(json!({"function": "echo", "input": 1})),
        429,
        "job-storage-full",
    );
}

/// Bytes free on the file system of `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

#[test]
fn a_submit_to_a_nearly_full_disk_is_503_and_nothing_of_it_is_kept() {
    let s = TestServer::start_on_tmpfs(64, "[jobs]\nworkers = 0\nmin_free_disk_mb = 8\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 10000}));
    // Fill the disk but for 12 MiB, of which 8 are kept free, then submit 512 KiB jobs (each
    // also has a 512 KiB result) until one is refused.
    let filler = s.data_dir().join("filler");
    let room = free_bytes(&s.data_dir()).saturating_sub(12 << 20);
    std::fs::write(&filler, vec![1u8; room as usize]).unwrap();
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let r = s
            .with_key(&key, Method::POST, "/v1/jobs")
            .header("idempotency-key", format!("fill-{i}"))
            .json(&json!({"function": "echo", "input": "x".repeat(512 << 10)}))
            .send()
            .unwrap();
        if r.status() == 202 {
            accepted.push(
                r.json::<Value>().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            continue;
        }
        assert!(r.headers().contains_key("retry-after"));
        assert_problem(r, 503, "storage-full");
        refused = Some(i);
        break;
    }
    let refused = refused.expect("the disk never filled");
    // Every accepted job is whole; the refused one left nothing, not even its key.
    let listed: Value = s
        .with_key(&key, Method::GET, "/v1/jobs?limit=100")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut ids: Vec<String> = listed["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}\n{}", s.log()))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = accepted.clone();
    want.sort();
    assert_eq!(ids, want);
    // An upload to the full disk is refused the same way (before it is compiled).
    let r = s.upload(&key, function_bytes("spin"));
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, 503, "storage-full");
    // With room again the same submission goes through, as a new job.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(s.upload(&key, function_bytes("spin")).status(), 201);
    s.assert_still_serving();
    let again = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .header("idempotency-key", format!("fill-{refused}"))
        .json(&json!({"function": "echo", "input": "again"}))
        .send()
        .unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().unwrap();
    assert!(!accepted.contains(&again["id"].as_str().unwrap().to_owned()));
    let done = get_job(&s, &key, again["id"].as_str().unwrap(), "20s");
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[test]
fn a_result_the_disk_has_no_room_for_fails_its_job_and_the_store_goes_on() {
    let s = TestServer::start_on_tmpfs(64, "[jobs]\nworkers = 0\nmin_free_disk_mb = 2\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "hello", "hello", json!({"timeout_ms": 10000}));
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 10000}));
    // 5 MiB free, 2 kept free; the answer is 6 MB.
    let filler = s.data_dir().join("filler");
    let room = free_bytes(&s.data_dir()).saturating_sub(5 << 20);
    std::fs::write(&filler, vec![1u8; room as usize]).unwrap();
    let r = s
        .with_key(&key, Method::GET, "/fn/hello?name=x&pad=6000000")
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = get_job(&s, &key, &id, "20s");
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["type"], "https://wafer.dev/problems/storage-full",
        "{done}"
    );
    assert_eq!(
        done["error"]["result_bytes"],
        6_000_000 + "Hello, x!\n".len()
    );
    // The store is whole: jobs go on being stored and run.
    let next = submit(&s, &key, json!({"function": "echo", "input": "after"}));
    let next = get_job(&s, &key, next["id"].as_str().unwrap(), "20s");
    assert_eq!(next["status"], "succeeded", "{next}");
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_and_the_job_has_one_result() {
    let s = TestServer::start_with_config(WORKERS);
    let (done, killed) = kill_a_worker_mid_job(&s);
    assert_eq!(done["route"], "worker");
    assert!(!worker_pids(&s).contains(&killed), "another worker ran it");
}

#[test]
fn a_job_that_kills_its_worker_every_time_ends_dead() {
    // Two deliveries, not the default three: the setting is what counts.
    let s = TestServer::start_with(
        "[jobs]\nworkers = 1\nworker_idle_ms = 400\nlease_ms = 400\nmax_deliveries = 2\n",
        &[("WAFER_CRASH_AT", "worker-running")],
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 60000}));
    let job = submit(
        &s,
        &key,
        json!({"function": "echo", "input": 1, "timeout_ms": 60000}),
    );
    let id = job["id"].as_str().unwrap();
    let dead = get_job(&s, &key, id, "30s");
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["error"]["deliveries"], 2);
    s.assert_still_serving();
}

#[test]
fn cancelling_a_job_on_a_worker_stops_its_guest() {
    let s = TestServer::start_with_config(WORKERS);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({"timeout_ms": 60000}));
    let job = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 30000, "timeout_ms": 60000}),
    );
    let id = job["id"].as_str().unwrap();
    wait_status(&s, &key, id, "running");
    let r = s
        .with_key(&key, Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The worker's one slot is free again long before the nap would have ended.
    let started = Instant::now();
    let next = submit(
        &s,
        &key,
        json!({"function": "nap", "input": 1, "timeout_ms": 60000}),
    );
    let next = get_job(&s, &key, next["id"].as_str().unwrap(), "20s");
    assert_eq!(next["status"], "succeeded", "{next}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get_job(&s, &key, id, "0")["status"], "cancelled");
}

#[test]
fn the_internal_api_is_invisible_without_the_runner_token() {
    let s = TestServer::start();
    let body = json!({"lane": "default", "lease_ms": 1000, "wait_ms": 0});
    for r in [
        s.anon(Method::POST, "/internal/v1/queue/claim")
            .json(&body)
            .send()
            .unwrap(),
        s.admin(Method::POST, "/internal/v1/queue/claim")
            .json(&body)
            .send()
            .unwrap(),
        s.admin(Method::GET, "/internal/v1/setup").send().unwrap(),
    ] {
        assert_problem(r, 404, "not-found");
    }
    let token = std::fs::read_to_string(s.data_dir().join("runner.key")).unwrap();
    let r = s
        .with_key(token.trim(), Method::POST, "/internal/v1/queue/claim")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["claimed"], Value::Null);
    // The runner token is no API key.
    let r = s
        .with_key(token.trim(), Method::GET, "/v1/jobs")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}

/// A webhook receiver on a free port: records each request (headers, body) and answers with
/// the next status of `answers` (200 once they run out).
struct Receiver {
    url: String,
    got: std::sync::mpsc::Receiver<(std::collections::HashMap<String, String>, Vec<u8>)>,
}

impl Receiver {
    fn start(answers: Vec<u16>) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut headers = std::collections::HashMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
                let len: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let status = answers.next().unwrap_or(200);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                if tx.send((headers, body)).is_err() {
                    return;
                }
            }
        });
        Self { url, got }
    }

    fn next(&self) -> (std::collections::HashMap<String, String>, Vec<u8>) {
        self.got
            .recv_timeout(Duration::from_secs(20))
            .expect("a webhook delivery")
    }
}

/// Checks a `Wafer-Signature` header over `body` with `secret`.
fn signed_by(header: &str, body: &[u8], secret: &str) -> bool {
    use hmac::Mac;
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

const HOOKS: &str =
    "[jobs]\nwebhook_allow_private = true\nwebhook_attempts = 3\nwebhook_backoff_ms = 50\n";

#[test]
fn a_webhook_is_signed_with_the_tenant_secret_and_delivered_when_the_job_ends() {
    let s = TestServer::start_with_config(HOOKS);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let hook = Receiver::start(vec![]);
    let job = submit(
        &s,
        &key,
        json!({"function": "echo", "input": 7, "webhook": hook.url}),
    );
    // The tenant's first webhook: the secret is shown once.
    let secret = job["webhook_secret"]
        .as_str()
        .expect("secret shown")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let (headers, body) = hook.next();
    assert!(
        signed_by(&headers["wafer-signature"], &body, &secret),
        "{headers:?}"
    );
    assert!(!signed_by(&headers["wafer-signature"], b"{}", &secret));
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["id"], job["id"]);
    assert_eq!(sent["status"], "succeeded");
    assert_eq!(headers["wafer-job-id"], job["id"].as_str().unwrap());
    let id = job["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_job(&s, &key, id, "0")["webhook"]["status"] != "delivered" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get_job(&s, &key, id, "0")["webhook"]["attempts"], 1);

    // Later jobs do not show the secret again; a rotated secret signs what follows.
    let second = submit(&s, &key, json!({"function": "echo", "webhook": hook.url}));
    assert!(second.get("webhook_secret").is_none(), "{second}");
    let (headers, body) = hook.next();
    assert!(signed_by(&headers["wafer-signature"], &body, &secret));
    let rotated: Value = s
        .with_key(&key, Method::POST, "/v1/webhooks/secret")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let new_secret = rotated["webhook_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    submit(&s, &key, json!({"function": "echo", "webhook": hook.url}));
    let (headers, body) = hook.next();
    assert!(signed_by(&headers["wafer-signature"], &body, new_secret));
    assert!(!signed_by(&headers["wafer-signature"], &body, &secret));
}

#[test]
fn a_webhook_endpoint_that_fails_is_retried_and_one_that_is_down_is_recorded_failed() {
    let s = TestServer::start_with_config(HOOKS);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    // Two failures, then success: delivered on the third attempt.
    let flaky = Receiver::start(vec![503, 500]);
    let job = submit(&s, &key, json!({"function": "echo", "webhook": flaky.url}));
    for attempt in 1..=3 {
        let (headers, _) = flaky.next();
        assert_eq!(headers["wafer-delivery-attempt"], attempt.to_string());
    }
    let id = job["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let webhook = loop {
        let w = get_job(&s, &key, id, "0")["webhook"].clone();
        if w["status"] == "delivered" {
            break w;
        }
        assert!(Instant::now() < deadline, "{w}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(webhook["attempts"], 3);

    // Nothing listens: retried, then failed; the job itself succeeded.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let job = submit(
        &s,
        &key,
        json!({"function": "echo", "input": 1, "webhook": url}),
    );
    let id = job["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let v = get_job(&s, &key, id, "1s");
        if v["webhook"]["status"] == "failed" {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["webhook"]["attempts"], 3);
    assert!(done["webhook"]["last_error"].as_str().is_some());
}

#[test]
fn webhooks_to_private_addresses_are_refused_by_default_and_bad_urls_at_submit() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let hook = Receiver::start(vec![]);
    // An address in the URL, and a name that resolves to one (checked by the resolver).
    let by_name = hook.url.replace("127.0.0.1", "localhost");
    assert_ne!(by_name, hook.url);
    for url in [&hook.url, &by_name] {
        let job = submit(&s, &key, json!({"function": "echo", "webhook": url}));
        let id = job["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let done = loop {
            let v = get_job(&s, &key, id, "1s");
            if v["webhook"]["status"] == "failed" {
                break v;
            }
            assert!(Instant::now() < deadline, "{v}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(done["webhook"]["attempts"], 1, "not retried: {done}");
        let why = done["webhook"]["last_error"].as_str().unwrap();
        assert!(why.contains("private"), "{why}");
        assert!(hook.got.try_recv().is_err(), "nothing was sent");
    }
    for bad in [
        "ftp://example.com/x",
        "https://user:pw@example.com/",
        "hook",
    ] {
        let r = s
            .with_key(&key, Method::POST, "/v1/jobs")
            .json(&json!({"function": "echo", "webhook": bad}))
            .send()
            .unwrap();
        assert_problem(r, 400, "invalid-webhook");
    }
}

#[test]
fn jobs_wait_shows_a_spinner_with_the_elapsed_time_on_a_terminal() {
    let s = TestServer::start();
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "nap", "nap", json!({}));
    let job = submit(&s, &key, json!({"function": "nap", "input": 700}));
    let id = job["id"].as_str().unwrap();
    // `script` runs the CLI on a pseudo-terminal, as a person at a terminal would.
    let o = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} jobs wait {id}",
            wafer_e2e::wafer_bin().display()
        ))
        .arg("/dev/null")
        .env("WAFER_URL", &s.url)
        .env("WAFER_API_KEY", &key)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    // Frames redrawn in place with the elapsed time, then the end.
    assert!(shown.matches('\r').count() >= 3, "{shown:?}");
    assert!(
        shown.contains("running") && shown.contains('s'),
        "{shown:?}"
    );
    assert!(
        shown.contains(&format!("{id} succeeded after")),
        "{shown:?}"
    );
}

#[test]
fn only_a_key_that_may_deploy_gets_the_webhook_signing_secret() {
    let s = TestServer::start_with_config(HOOKS);
    let deployer = s.key_with_scopes("acme", &["deploy", "invoke", "read"]);
    let invoker = s.key_with_scopes("acme", &["invoke", "read"]);
    s.deploy_as(&deployer, "echo", "echo", json!({}));
    let hook = Receiver::start(vec![]);
    let body = json!({"function": "echo", "input": 1, "webhook": hook.url});
    // No secret yet: an invoke-only key cannot make (and see) one.
    let r = s
        .with_key(&invoker, Method::POST, "/v1/jobs")
        .json(&body)
        .send()
        .unwrap();
    let p = assert_problem(r, 422, "webhook-secret-missing");
    assert!(!p.to_string().contains("whsec_"), "{p}");
    let r = s
        .with_key(&invoker, Method::POST, "/v1/webhooks/secret")
        .send()
        .unwrap();
    assert_problem(r, 403, "forbidden");
    // The deployer's first webhook makes it, shown once; then the invoker's jobs are signed
    // with it and never show it.
    let first = submit(&s, &deployer, body.clone());
    let secret = first["webhook_secret"].as_str().unwrap().to_owned();
    hook.next();
    let theirs = submit(&s, &invoker, body);
    assert!(theirs.get("webhook_secret").is_none(), "{theirs}");
    let (headers, sent) = hook.next();
    assert!(signed_by(&headers["wafer-signature"], &sent, &secret));
}

#[test]
fn webhooks_never_take_a_proxy_from_the_environment() {
    // A "proxy" that records whoever connects to it.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    proxy.set_nonblocking(true).unwrap();
    let s = TestServer::start_with(
        HOOKS,
        &[
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("ALL_PROXY", proxy_url.as_str()),
            ("NO_PROXY", ""),
        ],
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let hook = Receiver::start(vec![]);
    submit(
        &s,
        &key,
        json!({"function": "echo", "input": 1, "webhook": hook.url}),
    );
    let (headers, _) = hook.next();
    assert!(headers.contains_key("wafer-signature"));
    assert!(
        proxy.accept().is_err(),
        "the delivery went through the environment's proxy"
    );
}

#[test]
fn webhook_deliveries_in_flight_are_bounded() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = TestServer::start_with_config(&format!("{HOOKS}webhook_max_in_flight = 2\n"));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    // A receiver that holds each request until four have arrived or 2 s have passed, and
    // records how many it held at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    {
        let (open, most, served) = (open.clone(), most.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (open, most, served) = (open.clone(), most.clone(), served.clone());
                std::thread::spawn(move || {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let mut buf = [0u8; 65536];
                    let _ = conn.read(&mut buf);
                    let until = Instant::now() + Duration::from_secs(2);
                    while open.load(Ordering::SeqCst) < 4 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    served.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
    }
    let ids: Vec<String> = (0..6)
        .map(|i| {
            submit(
                &s,
                &key,
                json!({"function": "echo", "input": i, "webhook": url}),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_job(&s, &key, id, "0")["webhook"]["status"] != "delivered" {
            assert!(Instant::now() < deadline, "{id} never delivered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(served.load(Ordering::SeqCst), 6);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} deliveries at once");
}

/// Opens job `id`'s event stream as `key` and reads its first event (the stream then holds
/// a wait on the server).
fn open_events(s: &TestServer, key: &str, id: &str) -> BufReader<reqwest::blocking::Response> {
    let r = s
        .with_key(key, Method::GET, &format!("/v1/jobs/{id}/events"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = BufReader::new(r);
    let mut line = String::new();
    while !line.starts_with("event: status") {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "the stream ended");
    }
    stream
}

/// A 30 s job of `key`'s function `function` (a nap).
fn napping(s: &TestServer, key: &str, function: &str) -> String {
    submit(s, key, json!({"function": function, "input": 30000}))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn waits_are_bounded_per_tenant_and_in_all() {
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 0\nmax_waits = 3\nmax_waits_per_tenant = 2\n",
    );
    let keys: Vec<String> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|t| {
            let k = s.tenant_key(t);
            s.deploy_as(&k, &format!("nap-{t}"), "nap", json!({"timeout_ms": 60000}));
            k
        })
        .collect();
    let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
    let a1 = napping(&s, a, "nap-alpha");
    let mut streams = vec![open_events(&s, a, &a1), open_events(&s, a, &a1)];
    // Alpha holds its two: a third wait of alpha's, stream or long poll, is refused.
    let poll = |k: &str, id: &str| {
        s.with_key(k, Method::GET, &format!("/v1/jobs/{id}?wait=1s"))
            .send()
            .unwrap()
    };
    let r = poll(a, &a1);
    assert!(r.headers().contains_key("retry-after"));
    let p = assert_problem(r, 429, "too-many-waits");
    assert!(p["detail"].as_str().unwrap().contains("this tenant"), "{p}");
    let r = s
        .with_key(a, Method::GET, &format!("/v1/jobs/{a1}/events"))
        .send()
        .unwrap();
    assert_problem(r, 429, "too-many-waits");
    // A read without a wait is no wait.
    let now = get_job(&s, a, &a1, "0");
    assert!(
        matches!(now["status"].as_str(), Some("queued" | "running")),
        "{now}"
    );
    // Beta waits too; then the server is at its bound for everyone.
    let b1 = napping(&s, b, "nap-beta");
    streams.push(open_events(&s, b, &b1));
    let c1 = napping(&s, c, "nap-gamma");
    let p = assert_problem(poll(c, &c1), 429, "too-many-waits");
    assert!(p["detail"].as_str().unwrap().contains("the server"), "{p}");
    // Alpha's job ends: its streams end, and its waits are free again.
    let r = s
        .with_key(a, Method::DELETE, &format!("/v1/jobs/{a1}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for mut stream in streams.drain(..2) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stream, &mut rest).unwrap();
        assert!(rest.contains("cancelled"), "{rest}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = poll(c, &c1);
        if r.status() == 200 {
            break;
        }
        assert_problem(r, 429, "too-many-waits");
        assert!(
            Instant::now() < deadline,
            "the ended streams' waits were never freed"
        );
    }
}
