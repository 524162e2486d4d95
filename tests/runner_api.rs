//! The runners' API as a boundary: the token is checked before any body is read, bodies arrive
//! within the body timeout, and whole results (up to the response limit) come back from
//! workers and dedicated runners.

use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;
use wafer_e2e::jobs::{get_job, submit};
use wafer_e2e::{TestServer, read_head};

/// Sends the head of `POST /internal/v1/queue/claim` announcing a megabyte of body that never
/// comes, with `token` if any; returns the connection.
fn claim_without_a_body(s: &TestServer, token: Option<&str>) -> TcpStream {
    let mut sock = TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        sock,
        "POST /internal/v1/queue/claim HTTP/1.1\r\nHost: x\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    sock.flush().unwrap();
    sock
}

#[test]
fn a_caller_without_the_runner_token_is_refused_before_its_body_is_read() {
    // A body timeout far beyond the read timeout: only an answer that does not wait for the
    // body arrives in time.
    let s = TestServer::start_with_config("body_timeout_ms = 600000\n");
    let mut sock = claim_without_a_body(&s, None);
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut sock = claim_without_a_body(&s, Some("wfr_not_the_token"));
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    s.assert_still_serving();
}

#[test]
fn a_runner_s_body_that_does_not_arrive_is_cut_at_the_body_timeout() {
    let s = TestServer::start_with_config("body_timeout_ms = 500\n");
    let token = std::fs::read_to_string(s.data_dir().join("runner.key")).unwrap();
    let mut sock = claim_without_a_body(&s, Some(token.trim()));
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("body-timeout"), "{head}");
}

/// Workers for every job not in the long lane (however fast its runs: no fast lane), and the
/// long lane on local runners.
const RUNNERS: &str =
    "[jobs]\nworkers = 1\nworker_concurrency = 1\nworker_idle_ms = 2000\nfast_lane_ms = 0\n";

/// Runs `hello` with `pad` bytes of padding as a job of `function` and checks the whole
/// result came back, from a runner of `route`.
fn whole_result(s: &TestServer, key: &str, function: &str, pad: usize, route: &str) {
    let r = s
        .with_key(
            key,
            Method::GET,
            &format!("/fn/{function}?name=x&pad={pad}"),
        )
        .header("prefer", "respond-async")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().unwrap();
    let id = job["id"].as_str().unwrap();
    let done = get_job(s, key, id, "60s");
    assert_eq!(done["status"], "succeeded", "{pad} bytes: {done}");
    assert_eq!(done["route"], route);
    assert_eq!(done["attempts"], 1, "no retry: {done}");
    let body = s
        .with_key(key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(body.len(), "Hello, x!\n".len() + pad);
    assert!(body.starts_with(b"Hello, x!\n..."));
}

#[test]
fn a_command_s_stdout_above_the_response_limit_comes_back_from_a_worker() {
    // Stdout may be larger than a response body: the runners' API takes either whole.
    let s = TestServer::start_with_config(&format!(
        "{RUNNERS}[functions]\nmax_stdout_bytes = 12582912\n"
    ));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({"timeout_ms": 60000}));
    let input = "a".repeat(10 << 20);
    let job = submit(&s, &key, json!({"function": "echo", "input": input}));
    let id = job["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "60s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["route"], "worker");
    assert_eq!(done["attempts"], 1, "no retry: {done}");
    let body = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(body.len() > 10 << 20, "{} bytes", body.len());
}

#[test]
fn results_up_to_the_response_limit_come_back_from_workers_and_dedicated_runners() {
    let s = TestServer::start_with_config(RUNNERS);
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "big", "hello", json!({"timeout_ms": 60000}));
    s.deploy_as(&key, "long", "hello", json!({"class": "long"}));
    // The default response limit, 8 MiB, is the whole answer's body.
    let limit = 8 << 20;
    for pad in [3 << 20, limit - "Hello, x!\n".len()] {
        whole_result(&s, &key, "big", pad, "worker");
        whole_result(&s, &key, "long", pad, "dedicated");
    }
}

#[test]
fn the_runners_api_can_have_a_listener_of_its_own() {
    let s = TestServer::start_with_config(&format!("internal_listen = \"127.0.0.1:0\"\n{RUNNERS}"));
    let internal = s
        .first_stdout
        .iter()
        .find_map(|l| l.strip_prefix("wafer runners' API listening on "))
        .expect("the internal listener's address")
        .trim()
        .to_owned();
    let token = std::fs::read_to_string(s.data_dir().join("runner.key")).unwrap();
    let claim = json!({"lane": "default", "lease_ms": 1000, "wait_ms": 0});
    let http = reqwest::blocking::Client::new();
    // The main listener no longer serves it, token or not.
    let r = s
        .with_key(token.trim(), Method::POST, "/internal/v1/queue/claim")
        .json(&claim)
        .send()
        .unwrap();
    wafer_e2e::assert_problem(r, 404, "not-found");
    // Its own listener does, and nothing else.
    let r = http
        .post(format!("{internal}/internal/v1/queue/claim"))
        .bearer_auth(token.trim())
        .json(&claim)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{internal}/v1/functions"))
        .bearer_auth(&s.admin_key)
        .send()
        .unwrap();
    wafer_e2e::assert_problem(r, 404, "not-found");
    // Workers are given its address: a job on a worker runs.
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "big", "hello", json!({"timeout_ms": 60000}));
    whole_result(&s, &key, "big", 10, "worker");
}
