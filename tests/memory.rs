//! Memory is bounded for the whole instance and for the whole host: `memory_mb` covers every
//! memory and table of an instance together, invocations in flight are admitted against a host
//! memory budget, and a module needing more than an instance slot holds is refused at upload.

use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use wafer_e2e::wasm::memory_component;
use wafer_e2e::{TestServer, assert_problem};

const MIB_PAGES: i32 = 16; // 64 KiB pages in a MiB

#[test]
fn memory_mb_bounds_all_memories_of_an_instance_together() {
    let s = TestServer::start();
    // Four memories of 3 MiB: 12 MiB in all, within 16.
    s.deploy_bytes(
        &s.admin_key,
        "fits",
        memory_component(4, 3 * MIB_PAGES, false),
        json!({"memory_mb": 16}),
    );
    assert_eq!(s.invoke("fits", b"").status(), 200);
    // Four memories of 5 MiB: each alone is within 16 MiB, together they are 20.
    s.deploy_bytes(
        &s.admin_key,
        "too-much",
        memory_component(4, 5 * MIB_PAGES, false),
        json!({"memory_mb": 16}),
    );
    let v = assert_problem(s.invoke("too-much", b""), 502, "memory-limit");
    assert_eq!(v["limit"], 16 << 20);
    assert!(v["detail"].as_str().unwrap().contains("together"), "{v}");
}

#[test]
fn the_host_memory_budget_bounds_what_is_in_flight_and_spares_other_tenants() {
    // A tenant may hold three quarters of the budget: 480 MiB, so three calls of 128 MiB.
    let s = TestServer::start_with_config("memory_budget_mb = 640\n");
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    // Each call fills four memories of 31 MiB (124 MiB resident), then spins to the deadline.
    s.deploy_bytes(
        &a,
        "hungry",
        memory_component(4, 31 * MIB_PAGES, true),
        json!({"memory_mb": 128, "timeout_ms": 4000, "fuel": 10_000_000_000_000u64}),
    );
    s.deploy_as(&b, "small", "hello", json!({"memory_mb": 16}));
    assert_eq!(
        s.with_key(&b, Method::GET, "/fn/small")
            .send()
            .unwrap()
            .status(),
        200
    );
    let base = s.rss_bytes();
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    let r = s.with_key(&a, Method::POST, "/fn/hungry").send().unwrap();
                    let retry = r.headers().get("retry-after").is_some();
                    (r.status().as_u16(), retry)
                })
            })
            .collect();
        assert!(s.wait_in_flight(3), "three hungry calls never ran together");
        // Wait (bounded) until the three have filled their memories, then measure.
        let started = Instant::now();
        let mut peak = 0;
        while started.elapsed() < Duration::from_secs(3) {
            peak = peak.max(s.rss_bytes());
            if peak >= base + 3 * (120 << 20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let grown = peak.saturating_sub(base) >> 20;
        println!("server RSS grew by {grown} MiB with the budget of 640 MiB in use");
        assert!(
            grown >= 3 * 120,
            "the hungry calls did not fill their memory: {grown} MiB"
        );
        assert!(
            grown <= 640,
            "RSS grew by {grown} MiB, past the 640 MiB budget"
        );
        // Another tenant still answers meanwhile.
        let r = s
            .with_key(&b, Method::GET, "/fn/small?name=b")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let results: Vec<(u16, bool)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        let timed_out = results.iter().filter(|r| r.0 == 504).count();
        // Refused at the tenant's share of the budget: 429, and they may come back.
        let refused = results.iter().filter(|r| *r == &(429, true)).count();
        assert_eq!((timed_out, refused), (3, 7), "{results:?}");
    });
}

#[test]
fn a_module_needing_more_than_a_slot_holds_is_refused_at_upload() {
    let s = TestServer::start();
    let v = assert_problem(
        s.upload(&s.admin_key, memory_component(5, 1, false)),
        422,
        "instance-limits",
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("max_memories_per_component"),
        "{v}"
    );
    let v = assert_problem(
        s.upload(&s.admin_key, memory_component(25, 0, false)),
        422,
        "instance-limits",
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("max_core_instances_per_component"),
        "{v}"
    );
    s.assert_still_serving();
}

/// A preview-1 command module whose memory starts at `pages` pages.
fn module_with_initial_memory(pages: u64) -> Vec<u8> {
    wafer_e2e::wasm::command_module(Some(pages), None, 0, |_| {})
}

#[test]
fn initial_memory_beyond_any_limit_is_refused_at_upload_and_below_the_version_at_deploy() {
    let s = TestServer::start();
    // 9000 pages = 562 MiB at start; no function may have more than 512.
    let v = assert_problem(
        s.upload(&s.admin_key, module_with_initial_memory(9000)),
        422,
        "instance-limits",
    );
    assert!(
        v["detail"].as_str().unwrap().contains("max_memory_mb"),
        "{v}"
    );
    // 320 pages = 20 MiB at start: fine to upload, but not as a 16 MiB function.
    let r = s.upload(&s.admin_key, module_with_initial_memory(320));
    assert_eq!(r.status(), 201);
    let digest = r.json::<serde_json::Value>().unwrap()["digest"].clone();
    let r = s
        .admin(Method::PUT, "/v1/functions/roomy")
        .json(&json!({"module": digest, "memory_mb": 16}))
        .send()
        .unwrap();
    let v = assert_problem(r, 422, "memory-limit-too-small");
    assert_eq!(v["min_memory_mb"], 20);
    let r = s
        .admin(Method::PUT, "/v1/functions/roomy")
        .json(&json!({"module": digest, "memory_mb": 32}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.invoke("roomy", b"").status(), 200);
}

#[test]
fn components_with_several_memories_cannot_exhaust_the_pool_for_others() {
    // Sixteen slots; one tenant may run twelve calls, each holding four memories. Pool totals
    // follow the per-slot maxima, so the twelve run and the other tenant still gets a slot.
    let s = TestServer::start_with_config(
        "max_inflight = 16\nmax_inflight_per_tenant = 12\n[engine]\nmax_instances = 16\n",
    );
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_bytes(
        &a,
        "many",
        memory_component(4, 1, true),
        json!({"memory_mb": 8, "timeout_ms": 2500, "fuel": 10_000_000_000_000u64}),
    );
    s.deploy_as(&b, "other", "hello", json!({}));
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    s.with_key(&a, Method::POST, "/fn/many")
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        assert!(s.wait_in_flight(12), "twelve calls never ran together");
        for _ in 0..5 {
            let r = s.with_key(&b, Method::GET, "/fn/other").send().unwrap();
            assert_eq!(r.status(), 200);
        }
        let statuses: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(statuses, vec![504; 12], "every call ran to its deadline");
    });
}

#[test]
fn large_job_inputs_are_never_built_into_trees_and_submits_are_bounded_together() {
    // The long lane's launcher fails at once: the jobs never run, only their submits cost.
    let s = TestServer::start_with_config(
        "[jobs.long]\nprovisioner = \"command\"\n[jobs.long.command]\nlaunch = [\"/bin/false\"]\n",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "sink", "echo", json!({"class": "long"}));
    // 16 MiB of JSON: an array of zeros, which as a tree of values takes hundreds of MiB.
    let zeros = (16 << 20) - 64;
    let mut body = br#"{"function":"sink","input":["#.to_vec();
    body.extend(std::iter::repeat_n(b"0,".as_slice(), zeros / 2 - 1).flatten());
    body.extend_from_slice(b"0]}");
    let body = std::sync::Arc::new(body);
    let before = s.rss_bytes();
    // Start the peak (VmHWM) anew from here.
    std::fs::write(format!("/proc/{}/clear_refs", s.pid()), "5").unwrap();
    std::thread::scope(|scope| {
        let submits: Vec<_> = (0..8)
            .map(|_| {
                let body = body.clone();
                let (url, key) = (s.url.clone(), key.clone());
                scope.spawn(move || {
                    reqwest::blocking::Client::new()
                        .post(format!("{url}/v1/jobs"))
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body(body.to_vec())
                        .timeout(Duration::from_secs(120))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for h in submits {
            assert_eq!(h.join().unwrap(), 202);
        }
    });
    let grown = s.status_bytes("VmHWM:").saturating_sub(before) >> 20;
    println!("eight concurrent 16 MiB submits: the server's peak RSS grew by {grown} MiB");
    assert!(grown < 512, "peak RSS grew by {grown} MiB");
    s.assert_still_serving();
}

#[test]
fn what_the_server_s_pool_could_never_admit_is_refused_not_left_waiting() {
    // A budget of 64 MiB: a tenant's share is 48.
    let s = TestServer::start_with_config("memory_budget_mb = 64\n[jobs]\nworkers = 0\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "wide", "echo", json!({"memory_mb": 56}));
    let r = s
        .with_key(&key, Method::POST, "/fn/wide")
        .body("x")
        .send()
        .unwrap();
    let p = assert_problem(r, 422, "memory-over-budget");
    assert_eq!(p["limit"], 48);
    let r = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .json(&json!({"function": "wide", "input": 1}))
        .send()
        .unwrap();
    assert_problem(r, 422, "memory-over-budget");
    // Within the share it runs; declared long, it goes to a runner of its own.
    s.deploy_as(&key, "narrow", "echo", json!({"memory_mb": 48}));
    let r = s
        .with_key(&key, Method::POST, "/fn/narrow")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    s.deploy_as(
        &key,
        "wide",
        "echo",
        json!({"memory_mb": 56, "class": "long"}),
    );
    let r = s
        .with_key(&key, Method::POST, "/v1/jobs")
        .json(&json!({"function": "wide", "input": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().unwrap();
    assert_eq!(job["route"], "dedicated");
}
