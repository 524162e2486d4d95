//! Slow, idle and too many clients: they hold connections, never invocation slots, and are
//! closed by the header-read timeout and the connection cap; shutdown drains within a deadline.

use reqwest::Method;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wafer_e2e::{TestServer, read_head};

fn connect(s: &TestServer) -> TcpStream {
    let sock = TcpStream::connect(s.url.trim_start_matches("http://")).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock
}

/// Waits for the server to close `sock`; returns how long that took, or None if it stayed
/// open for `within`.
fn closed_within(sock: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            // Bytes of an answer (e.g. a 408) before the close.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(_) => return None,
        }
    }
}

/// Sorted latencies (ms) of `n` calls of `hello` by `key`, each asserted 200.
fn hello_latencies(s: &TestServer, key: &str, n: usize) -> Vec<f64> {
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = s
                .with_key(key, Method::GET, "/fn/quick?name=b")
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", r.text());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

#[test]
fn stalled_bodies_and_idle_sockets_take_no_slots_from_another_tenant() {
    // Few slots, so that stalled bodies holding slots would show at once as 503s.
    let s = TestServer::start_with_config("max_inflight = 8\nmax_inflight_per_tenant = 6\n");
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "open", "echo", json!({"public": true}));
    s.deploy_as(&b, "quick", "hello", json!({}));
    let before = hello_latencies(&s, &b, 30);

    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut sock = TcpStream::connect(&addr).unwrap();
        write!(
            sock,
            "POST /fn/open HTTP/1.1\r\nHost: x\r\nContent-Length: 16000000\r\n\r\nsome bytes"
        )
        .unwrap();
        stalled.push(sock);
    }
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    assert!(s.metrics().contains("wafer_invocations_in_flight 0\n"));

    let during = hello_latencies(&s, &b, 30);
    let (p50_before, p50_during) = (before[15], during[15]);
    let max_during = during[during.len() - 1];
    println!(
        "hello p50 before {p50_before:.2} ms, during {p50_during:.2} ms, max {max_during:.2} ms"
    );
    assert!(
        max_during < 500.0 && p50_during < p50_before * 5.0 + 20.0,
        "latency under 500 stalled/idle sockets: p50 {p50_during:.2} ms (before {p50_before:.2}), max {max_during:.2}"
    );
    drop((stalled, idle));
}

#[test]
fn silent_trickling_and_idle_keep_alive_connections_are_closed() {
    let s = TestServer::start_with_config("header_read_timeout_ms = 400\n");
    // Nothing sent at all.
    let mut silent = connect(&s);
    // Half a request head, then nothing.
    let mut trickle = connect(&s);
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // One whole request, answered, then idle.
    let mut idle = connect(&s);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut idle).starts_with("HTTP/1.1 200"));
    for (what, sock) in [
        ("silent", &mut silent),
        ("trickle", &mut trickle),
        ("idle", &mut idle),
    ] {
        let took = closed_within(sock, Duration::from_secs(5));
        assert!(took.is_some(), "{what} connection still open after 5 s");
        println!("{what} connection closed after {:?}", took.unwrap());
    }
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
    let s = TestServer::start_with_config("max_connections = 16\n");
    let mut held: Vec<TcpStream> = (0..16).map(|_| connect(&s)).collect();
    // Connections are accepted in order: once the last one is answered, all are in.
    let last = held.last_mut().unwrap();
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_head(last).starts_with("HTTP/1.1 200"));
    let mut extra = connect(&s);
    let took = closed_within(&mut extra, Duration::from_secs(3));
    assert!(took.is_some(), "a connection past the cap stayed open");
    drop(held);
    // Room again: a new client is served.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = s.anon(Method::GET, "/healthz").send()
            && r.status() == 200
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "no room after the held connections closed");
    let m = s.metrics();
    let refused = m
        .lines()
        .find_map(|l| l.strip_prefix("wafer_connections_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "{m}");
}
