//! The sandbox: every limit is enforced with a precise problem, and the server keeps serving.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wafer_e2e::{TestServer, assert_problem};

#[test]
fn fuel_exhaustion_is_502_fuel_exhausted() {
    let s = TestServer::start();
    s.deploy(
        "spin",
        "spin",
        json!({"fuel": 1_000_000, "timeout_ms": 60_000}),
    );
    let v = assert_problem(s.invoke("spin", b""), 502, "fuel-exhausted");
    assert!(v["detail"].as_str().unwrap().contains("fuel"), "{v}");
    s.assert_still_serving();
}

#[test]
fn endless_loop_hits_the_deadline_504() {
    let s = TestServer::start();
    s.deploy(
        "spin",
        "spin",
        json!({"fuel": 10_000_000_000_000u64, "timeout_ms": 300}),
    );
    let v = assert_problem(s.invoke("spin", b""), 504, "timeout");
    assert_eq!(v["limit"], 300);
    s.assert_still_serving();
}

#[test]
fn a_sleeping_host_call_still_ends_at_the_deadline() {
    let s = TestServer::start();
    // nap sleeps 30 s in a host call; epoch interruption alone would not stop it.
    s.deploy("nap", "nap", json!({"timeout_ms": 400}));
    let started = Instant::now();
    let v = assert_problem(s.invoke("nap", b""), 504, "timeout");
    assert_eq!(v["limit"], 400);
    assert!(
        started.elapsed().as_secs() < 25,
        "the 30 s sleep was cut short"
    );
    s.assert_still_serving();
}

#[test]
fn memory_growth_past_the_limit_is_502_memory_limit() {
    let s = TestServer::start();
    s.deploy("hog", "hog", json!({"memory_mb": 16}));
    let v = assert_problem(s.invoke("hog", b""), 502, "memory-limit");
    assert_eq!(v["limit"], 16 << 20);
    assert!(
        v["detail"].as_str().unwrap().contains("memory limit"),
        "{v}"
    );
    s.assert_still_serving();
}

#[test]
fn unbounded_recursion_is_502_stack_overflow() {
    let s = TestServer::start();
    s.deploy("deep", "deep", json!({}));
    assert_problem(s.invoke("deep", b""), 502, "stack-overflow");
    s.assert_still_serving();
}

#[test]
fn endless_stdout_is_502_output_limit() {
    let s = TestServer::start();
    s.deploy("flood", "flood", json!({}));
    let v = assert_problem(s.invoke("flood", b""), 502, "output-limit");
    assert_eq!(v["limit"], 8 << 20);
    s.assert_still_serving();
}

#[test]
fn nonzero_exit_is_502_with_the_stderr_tail() {
    let s = TestServer::start();
    s.deploy("fail", "fail", json!({}));
    let v = assert_problem(s.invoke("fail", b"disk full"), 502, "nonzero-exit");
    assert_eq!(v["exit_code"], 3);
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("something went wrong: disk full"),
        "{v}"
    );
    s.assert_still_serving();
}

#[test]
fn no_filesystem_and_no_host_environment() {
    let s = TestServer::start();
    s.deploy("escape", "escape", json!({"env": {"GRANTED": "yes"}}));
    let r = s.invoke("escape", b"");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let files = v["files"].as_object().unwrap();
    assert!(files.len() >= 5, "{v}");
    for (path, result) in files {
        assert!(
            result.as_str().unwrap().starts_with("denied"),
            "{path}: {result}"
        );
    }
    let env = v["env"].as_object().unwrap();
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["GRANTED"], "exactly the configured environment: {v}");
    assert_eq!(env["GRANTED"], "yes");
    // Opted in, a command also sees the call's method and path.
    s.deploy(
        "escape",
        "escape",
        json!({"env": {"GRANTED": "yes"}, "request_env": true}),
    );
    let v: Value = s
        .admin(reqwest::Method::POST, "/fn/escape/some/path?q=1")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let env = v["env"].as_object().unwrap();
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["GRANTED", "WAFER_METHOD", "WAFER_PATH"], "{v}");
    assert_eq!(env["WAFER_METHOD"], "POST");
    assert!(
        env["WAFER_PATH"]
            .as_str()
            .unwrap()
            .starts_with("/some/path"),
        "{v}"
    );
}

#[test]
fn hostile_functions_do_not_disturb_others_meanwhile() {
    let s = TestServer::start();
    s.deploy(
        "spin",
        "spin",
        json!({"fuel": 10_000_000_000_000u64, "timeout_ms": 4000}),
    );
    s.deploy("hello", "hello", json!({}));
    std::thread::scope(|scope| {
        let spinners: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| s.invoke("spin", b"").status().as_u16()))
            .collect();
        assert!(s.wait_in_flight(2), "the spinners never started");
        // While two guests spin on both cores, hello still answers, and quickly.
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            let r = s.admin(reqwest::Method::GET, "/fn/hello").send().unwrap();
            assert_eq!(r.status(), 200);
            slowest = slowest.max(t.elapsed());
        }
        println!("slowest hello beside two spinners: {slowest:?}");
        assert!(slowest < Duration::from_millis(300), "{slowest:?}");
        assert!(
            s.metrics().contains("wafer_invocations_in_flight 2\n"),
            "spinners ended early"
        );
        for h in spinners {
            assert_eq!(h.join().unwrap(), 504);
        }
    });
}

#[test]
fn the_control_plane_answers_while_every_slot_spins() {
    const SLOTS: usize = 64;
    let s = TestServer::start_with_config(&format!(
        "max_inflight = {SLOTS}\nmax_inflight_per_tenant = {SLOTS}\n"
    ));
    s.deploy(
        "spin",
        "spin",
        json!({"fuel": 10_000_000_000_000u64, "timeout_ms": 8000}),
    );
    std::thread::scope(|scope| {
        let spinners: Vec<_> = (0..SLOTS)
            .map(|_| scope.spawn(|| s.invoke("spin", b"").status().as_u16()))
            .collect();
        assert!(s.wait_in_flight(SLOTS as u64), "not every slot is spinning");
        assert_problem(s.invoke("spin", b""), 503, "overloaded");
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            for path in [
                "/healthz",
                "/readyz",
                "/v1/functions",
                "/v1/functions/spin/versions",
            ] {
                let t = Instant::now();
                let r = s.admin(reqwest::Method::GET, path).send().unwrap();
                assert_eq!(r.status(), 200, "{path}");
                slowest = slowest.max(t.elapsed());
            }
        }
        let t = Instant::now();
        s.deploy("fresh", "hello", json!({}));
        let deploy = t.elapsed();
        println!(
            "with {SLOTS} guests spinning: slowest control read {slowest:?}, deploy {deploy:?}"
        );
        assert!(
            slowest < Duration::from_millis(250),
            "control reads took up to {slowest:?}"
        );
        assert!(deploy < Duration::from_secs(5), "a deploy took {deploy:?}");
        assert!(
            s.metrics()
                .contains(&format!("wafer_invocations_in_flight {SLOTS}\n")),
            "spinners ended before the control calls were measured"
        );
        for h in spinners {
            assert_eq!(h.join().unwrap(), 504);
        }
    });
}

#[test]
fn too_many_invocations_in_flight_get_503_with_retry_after() {
    let s = TestServer::start_with_config("max_inflight = 1\n");
    s.deploy("nap", "nap", json!({"timeout_ms": 5000}));
    std::thread::scope(|scope| {
        let first = scope.spawn(|| s.invoke("nap", b"").status().as_u16());
        // Wait until the first invocation holds the only slot.
        assert!(s.wait_in_flight(1), "the first invocation never started");
        let r = s.invoke("nap", b"");
        assert_eq!(r.headers()["retry-after"], "1");
        assert_problem(r, 503, "overloaded");
        assert_eq!(first.join().unwrap(), 504);
    });
}

#[test]
fn http_response_bodies_past_the_cap_are_502_output_limit() {
    let s = TestServer::start_with_config("[functions]\nmax_response_bytes = 8\n");
    s.deploy("hello", "hello", json!({}));
    let v = assert_problem(
        s.admin(reqwest::Method::GET, "/fn/hello").send().unwrap(),
        502,
        "output-limit",
    );
    assert_eq!(v["limit"], 8);
}

#[test]
fn request_bodies_past_the_limit_are_413() {
    let s = TestServer::start_with_config("max_request_bytes = 1024\n");
    s.deploy("echo", "echo", json!({}));
    let v = assert_problem(s.invoke("echo", &[b'x'; 2048]), 413, "request-too-large");
    assert_eq!(v["limit"], 1024);
    assert_eq!(s.invoke("echo", &[b'x'; 1000]).bytes().unwrap().len(), 1000);
}
