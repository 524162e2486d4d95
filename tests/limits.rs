//! Limits the rest of the suite does not reach: on HTTP components and preview-2 commands,
//! tables, the stderr tail, JSON bodies, chunked bodies, slow invocation bodies, the compile
//! slot wait, the network, and what one invocation leaves for the next.

use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;
use wafer_e2e::{TestServer, assert_problem, read_head};

#[test]
fn an_http_component_is_held_to_fuel_time_and_memory() {
    let s = TestServer::start();
    s.deploy(
        "spinner",
        "inspect",
        json!({"timeout_ms": 300, "fuel": 10_000_000_000_000u64}),
    );
    s.deploy("starved", "inspect", json!({"fuel": 10_000}));
    s.deploy("hungry", "inspect", json!({"memory_mb": 16}));
    let v = assert_problem(
        s.admin(Method::GET, "/fn/spinner?try=spin").send().unwrap(),
        504,
        "timeout",
    );
    assert_eq!(v["limit"], 300);
    assert_problem(
        s.admin(Method::GET, "/fn/starved").send().unwrap(),
        502,
        "fuel-exhausted",
    );
    let v = assert_problem(
        s.admin(Method::GET, "/fn/hungry?try=hog").send().unwrap(),
        502,
        "memory-limit",
    );
    assert_eq!(v["limit"], 16 << 20);
    s.assert_still_serving();
}

#[test]
fn a_preview2_command_is_held_to_fuel_time_and_memory() {
    let s = TestServer::start();
    s.deploy(
        "spin2",
        "spin-p2",
        json!({"timeout_ms": 300, "fuel": 10_000_000_000_000u64}),
    );
    s.deploy("fuel2", "spin-p2", json!({"fuel": 100_000}));
    s.deploy("hog2", "hog-p2", json!({"memory_mb": 16}));
    s.deploy("nap2", "nap-p2", json!({"timeout_ms": 300}));
    assert_problem(s.invoke("spin2", b""), 504, "timeout");
    assert_problem(s.invoke("fuel2", b""), 502, "fuel-exhausted");
    assert_problem(s.invoke("hog2", b""), 502, "memory-limit");
    // Asleep in a host call, still ended at the deadline.
    let started = std::time::Instant::now();
    assert_problem(s.invoke("nap2", b""), 504, "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.invoke("nap2", b"10").text().unwrap(), "awake\n");
}

/// A command with a memory of `pages` pages whose `_start` grows a funcref table by
/// `elements`.
fn table_grower(pages: u64, elements: i32) -> Vec<u8> {
    wafer_e2e::wasm::command_module(Some(pages), Some(1), 0, |f| {
        f.instructions()
            .ref_null(wasm_encoder::HeapType::FUNC)
            .i32_const(elements)
            .table_grow(0)
            .drop();
    })
}

#[test]
fn tables_are_held_to_their_element_limit_and_the_memory_budget() {
    let s = TestServer::start();
    s.deploy_bytes(
        &s.admin_key,
        "small-table",
        table_grower(1, 1000),
        json!({}),
    );
    assert_eq!(s.invoke("small-table", b"").status(), 200);
    s.deploy_bytes(
        &s.admin_key,
        "big-table",
        table_grower(1, 200_000),
        json!({}),
    );
    let v = assert_problem(s.invoke("big-table", b""), 502, "table-limit");
    assert_eq!(v["limit"], 100_000);
    // 512 KiB of memory and 90 000 elements (720 000 bytes) are past a 1 MiB budget together.
    s.deploy_bytes(
        &s.admin_key,
        "tight",
        table_grower(8, 90_000),
        json!({"memory_mb": 1}),
    );
    assert_problem(s.invoke("tight", b""), 502, "memory-limit");
}

#[test]
fn the_stderr_tail_is_capped() {
    let s = TestServer::start_with_config("[functions]\nmax_log_bytes = 1000\n");
    s.deploy("fail", "fail", json!({}));
    let mut input = vec![b'a'; 5000];
    input.extend_from_slice(b"THE-END");
    let v = assert_problem(s.invoke("fail", &input), 502, "nonzero-exit");
    let kept = v["stderr"].as_str().unwrap();
    assert!(kept.len() <= 1000, "{} bytes kept", kept.len());
    assert!(
        kept.trim_end().ends_with("THE-END"),
        "the tail is kept: {kept}"
    );
    let logs: Value = s
        .admin(Method::GET, "/v1/functions/fail/logs")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(logs["logs"][0]["log"].as_str().unwrap().len() <= 1000);
}

#[test]
fn json_bodies_past_their_limit_are_413() {
    let s = TestServer::start_with_config("max_json_bytes = 1024\n");
    let big = json!({"module": "sha256:00", "env": {"X": "y".repeat(2000)}});
    let r = s
        .admin(Method::PUT, "/v1/functions/f")
        .json(&big)
        .send()
        .unwrap();
    let v = assert_problem(r, 413, "request-too-large");
    assert_eq!(v["limit"], 1024);
}

/// Sends a chunked request of `total` bytes and returns the answer's head.
fn chunked(s: &TestServer, head: &str, total: usize) -> String {
    let mut sock = std::net::TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(sock, "{head}Transfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b'x'; 4096];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        // The server may answer and close before everything is sent.
        if write!(sock, "{n:x}\r\n").is_err()
            || sock.write_all(&chunk[..n]).is_err()
            || sock.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += n;
    }
    let _ = sock.write_all(b"0\r\n\r\n");
    read_head(&mut sock)
}

#[test]
fn chunked_bodies_past_the_limit_are_413_on_upload_and_invoke() {
    let s = TestServer::start_with_config("max_module_bytes = 65536\nmax_request_bytes = 8192\n");
    s.deploy("echo", "echo", json!({"public": true}));
    let key = s.admin_key.clone();
    let upload = format!(
        "PUT /v1/modules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/wasm\r\n"
    );
    let answer = chunked(&s, &upload, 200_000);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("module-too-large"), "{answer}");
    let answer = chunked(&s, "POST /fn/echo HTTP/1.1\r\nHost: x\r\n", 50_000);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request-too-large"), "{answer}");
    // Within the limit, chunked works.
    let answer = chunked(&s, "POST /fn/echo HTTP/1.1\r\nHost: x\r\n", 5000);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn an_invocation_body_that_trickles_is_408() {
    let s = TestServer::start_with_config("body_timeout_ms = 300\n");
    s.deploy("echo", "echo", json!({"public": true}));
    let mut sock = std::net::TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "POST /fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nslow"
    )
    .unwrap();
    let answer = read_head(&mut sock);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    s.assert_still_serving();
}

#[test]
fn uploads_wait_for_a_compile_slot_only_so_long() {
    let s = TestServer::start_with_config("max_compiles = 1\ncompile_wait_ms = 300\n");
    let slow = wafer_e2e::wasm::bombs::diamonds(400, 9000);
    std::thread::scope(|scope| {
        let first = scope.spawn(|| s.upload(&s.admin_key, slow).status().as_u16());
        // The first upload holds the only slot once its worker is busy: wait for that.
        let busy = (0..500).any(|_| {
            let m = std::fs::read_dir(s.data_dir().join("scratch"))
                .unwrap()
                .count()
                > 0;
            if !m {
                std::thread::sleep(Duration::from_millis(10));
            }
            m
        });
        assert!(busy, "the first compile never started");
        let started = std::time::Instant::now();
        let r = s.upload(&s.admin_key, wafer_e2e::function_bytes("hello"));
        assert_eq!(r.headers()["retry-after"], "1");
        assert_problem(r, 503, "overloaded");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(first.join().unwrap(), 201);
    });
}

#[test]
fn functions_reach_no_socket_and_no_outgoing_http() {
    let s = TestServer::start();
    s.deploy("peek", "inspect", json!({}));
    for what in ["socket", "http"] {
        let v: Value = s
            .admin(Method::GET, &format!("/fn/peek?try={what}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let tried = v["tried"].as_str().unwrap();
        assert!(tried.starts_with("refused"), "{what}: {tried}");
        if what == "http" {
            assert!(tried.contains("HttpRequestDenied"), "{tried}");
        }
        println!("{what}: {tried}");
    }
}

#[test]
fn nothing_of_one_invocation_is_visible_to_the_next() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "keeper", "scan", json!({"env": {"MODE": "keep"}}));
    s.deploy_as(
        &b,
        "scanner",
        "scan",
        json!({"env": {"MODE": "scan"}, "memory_mb": 64}),
    );
    s.deploy_as(
        &b,
        "selftest",
        "scan",
        json!({"env": {"MODE": "selftest"}, "memory_mb": 64}),
    );
    let secret = b"tenant-alpha-secret-7f3a9c".to_vec();
    let inverted: Vec<u8> = secret.iter().map(|b| !b).collect();
    // The scanner works: it finds the secret it kept itself.
    let r = s
        .with_key(&b, Method::POST, "/fn/selftest")
        .body(inverted.clone())
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "found\n");
    // Interleaved, on both cores, the other tenant never sees it.
    std::thread::scope(|scope| {
        let keeper = scope.spawn(|| {
            for _ in 0..30 {
                let r = s
                    .with_key(&a, Method::POST, "/fn/keeper")
                    .body(secret.clone())
                    .send()
                    .unwrap();
                assert_eq!(r.text().unwrap(), "kept\n");
            }
        });
        for _ in 0..30 {
            let r = s
                .with_key(&b, Method::POST, "/fn/scanner")
                .body(inverted.clone())
                .send()
                .unwrap();
            assert_eq!(r.text().unwrap(), "clean\n");
        }
        keeper.join().unwrap();
    });
    // And strictly one after the other.
    for _ in 0..10 {
        s.with_key(&a, Method::POST, "/fn/keeper")
            .body(secret.clone())
            .send()
            .unwrap();
        let r = s
            .with_key(&b, Method::POST, "/fn/scanner")
            .body(inverted.clone())
            .send()
            .unwrap();
        assert_eq!(r.text().unwrap(), "clean\n");
    }
}

#[test]
fn host_resources_and_header_fields_a_guest_holds_are_bounded() {
    let s = TestServer::start();
    s.deploy("peek", "inspect", json!({}));
    // Past 4 096 live resources the host refuses, and the invocation ends as a trap.
    let v = assert_problem(
        s.admin(Method::GET, "/fn/peek?try=resources")
            .send()
            .unwrap(),
        502,
        "trap",
    );
    println!("resources: {}", v["detail"]);
    // One set of header fields stops growing at 32 KiB: the host ends the invocation.
    let v = assert_problem(
        s.admin(Method::GET, "/fn/peek?try=fields").send().unwrap(),
        502,
        "trap",
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("fields exceeds limit"),
        "{v}"
    );
    s.assert_still_serving();
}
