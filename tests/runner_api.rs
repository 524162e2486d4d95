//! The runners' API as a boundary: the token is checked before any body is read, bodies arrive
//! within the body timeout, and whole results (up to the response limit) come back from
//! workers and dedicated runners.

use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;
use wafer_e2e::jobs::{get_job, submit, wait_status};
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

/// A runner as the runners' API sees it: a credential.
struct Runner<'a> {
    s: &'a TestServer,
    credential: String,
}

impl Runner<'_> {
    /// POSTs `body` to `path`: the status and the JSON answer (null when not JSON).
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .s
            .anon(Method::POST, path)
            .bearer_auth(&self.credential)
            .json(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    /// GETs `path`: the status and the body.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .s
            .anon(Method::GET, path)
            .bearer_auth(&self.credential)
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    }
}

/// A succeeded end whose result is `body`.
fn finish_body(body: &str) -> Value {
    use base64::Engine as _;
    json!({
        "end": {
            "status": "succeeded",
            "error": null,
            "result": {"status": 200, "headers": [["content-type", "text/plain"]], "bytes": body.len()},
            "stderr": "",
        },
        "output_base64": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

/// The module digest of `function`'s newest version.
fn module_of(s: &TestServer, key: &str, function: &str) -> String {
    let v: Value = s
        .with_key(
            key,
            Method::GET,
            &format!("/v1/functions/{function}/versions"),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["versions"][0]["module"].as_str().unwrap().to_owned()
}

/// The result body of a job.
fn result_of(s: &TestServer, key: &str, id: &str) -> String {
    s.with_key(key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn a_dedicated_runner_s_credential_reaches_its_own_job_and_nothing_else() {
    // The long lane on a provisioner that only writes down what a runner would be given;
    // the test then is that runner, and a taken-over one.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"command\"\nstart_timeout_ms = 120000\n\
         [jobs.long.command]\nlaunch = [\"/bin/sh\", \"-c\", \"env > {d}/$WAFER_JOB_ID.env; echo box-$WAFER_JOB_ID\"]\n",
        d = dir.path().display()
    ));
    let acme = s.tenant_key("acme");
    let rival = s.tenant_key("rival");
    s.deploy_as(&acme, "batch", "nap", json!({"class": "long"}));
    s.deploy_as(&rival, "theirs", "hello", json!({"class": "long"}));
    let mine = submit(&s, &acme, json!({"function": "batch", "input": 1}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = submit(&s, &rival, json!({"function": "theirs", "input": ""}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // What the provisioner was given for a job: its runner's environment.
    let launched = |id: &str| {
        let path = dir.path().join(format!("{id}.env"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("WAFER_CLAIM=") {
                let vars: std::collections::HashMap<String, String> = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                return (text, vars);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no runner launched for {id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (dump, env) = launched(&mine);
    let (_, their_env) = launched(&theirs);
    let runner_key = std::fs::read_to_string(s.data_dir().join("runner.key")).unwrap();
    assert!(
        !dump.contains(runner_key.trim()),
        "the runner key stays with the server"
    );
    assert!(!env.contains_key("WAFER_QUEUE_URL"));
    let runner = Runner {
        s: &s,
        credential: env["WAFER_RUNNER_TOKEN"].clone(),
    };
    assert!(
        runner.credential.starts_with("wrc."),
        "{}",
        runner.credential
    );
    let claim: Value = serde_json::from_str(&env["WAFER_CLAIM"]).unwrap();
    let their_claim: Value = serde_json::from_str(&their_env["WAFER_CLAIM"]).unwrap();
    let start = |delivery: &Value| json!({"route": "dedicated", "attempt": delivery});

    // Taken over, it reaches nothing of another job.
    let (status, _) = runner.post(
        &format!("/internal/v1/jobs/{theirs}/start"),
        &start(&their_claim["delivery"]),
    );
    assert_eq!(status, 403, "another job's input and secrets");
    let (status, _) = runner.post(
        &format!("/internal/v1/jobs/{theirs}/finish"),
        &finish_body("planted"),
    );
    assert_eq!(status, 403, "another job's end");
    let heartbeat = json!({"claim": their_claim, "lease_ms": 1000});
    assert_eq!(
        runner.post("/internal/v1/queue/heartbeat", &heartbeat).0,
        403
    );
    assert_eq!(runner.post("/internal/v1/queue/ack", &their_claim).0, 403);
    let their_module = module_of(&s, &rival, "theirs");
    let my_module = module_of(&s, &acme, "batch");
    let (status, setup) = runner.get("/internal/v1/setup");
    assert_eq!(status, 200);
    let setup: Value = serde_json::from_slice(&setup).unwrap();
    let fingerprint = setup["fingerprint"].as_str().unwrap();
    for path in [
        format!("/internal/v1/modules/{their_module}"),
        format!("/internal/v1/artifacts/{fingerprint}/{their_module}"),
    ] {
        assert_eq!(runner.get(&path).0, 403, "{path}: another tenant's module");
    }
    for lane in ["long", "default", "fast"] {
        let claim = json!({"lane": lane, "lease_ms": 1000, "wait_ms": 0});
        let (status, _) = runner.post("/internal/v1/queue/claim", &claim);
        assert_eq!(status, 403, "claiming from the {lane} lane");
    }
    let mut forged = runner.credential.clone();
    let last = if forged.ends_with('0') { "1" } else { "0" };
    forged.replace_range(forged.len() - 1.., last);
    let forged = Runner {
        s: &s,
        credential: forged,
    };
    assert_eq!(
        forged.get("/internal/v1/setup").0,
        404,
        "an altered credential is none"
    );
    let r = get_job(&s, &rival, &theirs, "0s");
    assert_eq!(r["status"], "queued", "the other job was not touched: {r}");

    // Its own job: all of it.
    let (status, module) = runner.get(&format!("/internal/v1/modules/{my_module}"));
    assert_eq!(status, 200);
    assert!(module.starts_with(b"\0asm"));
    let (status, started) = runner.post(
        &format!("/internal/v1/jobs/{mine}/start"),
        &start(&claim["delivery"]),
    );
    assert_eq!(status, 200);
    assert_eq!(started["order"]["function"], "batch", "{started}");
    let heartbeat = json!({"claim": claim, "lease_ms": 30000});
    assert_eq!(
        runner.post("/internal/v1/queue/heartbeat", &heartbeat).1["held"],
        true
    );
    let (_, finished) = runner.post(
        &format!("/internal/v1/jobs/{mine}/finish"),
        &finish_body("done by hand"),
    );
    assert_eq!(finished["stored"], true);
    let done = get_job(&s, &acme, &mine, "10s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(result_of(&s, &acme, &mine), "done by hand");
    // Once the job has ended, the credential reaches nothing more of it.
    let (status, _) = runner.get(&format!("/internal/v1/modules/{my_module}"));
    assert_eq!(status, 403, "a module after its job ended");
}

/// A server whose one worker on demand, with one slot, is kept busy by a long sleep of
/// tenant `tenant`: the server, that tenant's key and the sleeping job.
fn busy_worker(tenant: &str) -> (TestServer, String, String) {
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 1\nworker_concurrency = 1\nworker_idle_ms = 60000\nfast_lane_ms = 0\n",
    );
    let key = s.tenant_key(tenant);
    s.deploy_as(
        &key,
        "nap",
        "nap",
        json!({"timeout_ms": 120000, "class": "short"}),
    );
    let sleeper = submit(&s, &key, json!({"function": "nap", "input": 90000}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_status(&s, &key, &sleeper, "running");
    (s, key, sleeper)
}

#[test]
fn a_worker_s_lane_credential_claims_from_its_lane_and_reaches_a_job_only_through_its_claim() {
    // The test reads the busy worker's credential and uses it as a taken-over worker would.
    let (s, acme, sleeper) = busy_worker("acme");
    let rival = s.tenant_key("rival");
    s.deploy_as(&rival, "hello", "hello", json!({}));
    let worker = wafer_e2e::children(s.pid())
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(6).any(|w| w == b"worker"))
        })
        .expect("a worker process");
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let credential = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"WAFER_RUNNER_TOKEN="))
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .expect("the worker's credential");
    assert!(
        credential.starts_with("wrl.default."),
        "a lane's: {credential}"
    );
    let lane = Runner { s: &s, credential };

    let other = submit(&s, &rival, json!({"function": "hello", "input": ""}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let long = json!({"lane": "long", "lease_ms": 1000, "wait_ms": 0});
    assert_eq!(
        lane.post("/internal/v1/queue/claim", &long).0,
        403,
        "another lane"
    );
    let module = module_of(&s, &rival, "hello");
    let (status, _) = lane.get(&format!("/internal/v1/modules/{module}"));
    assert_eq!(status, 403, "a module, outside a claim");
    let start = format!("/internal/v1/jobs/{other}/start");
    let finish = format!("/internal/v1/jobs/{other}/finish");
    let (status, _) = lane.post(&start, &json!({"route": "worker", "attempt": 1}));
    assert_eq!(status, 403, "a job it did not claim");
    let (status, _) = lane.post(&finish, &finish_body("planted"));
    assert_eq!(status, 403, "an end without a claim");

    // Claimed from its lane, the job is its own.
    let wait = json!({"lane": "default", "lease_ms": 30000, "wait_ms": 10000});
    let (_, claimed) = lane.post("/internal/v1/queue/claim", &wait);
    let claim = claimed["claimed"]["job"].clone();
    assert_eq!(claim["job"]["id"], other.as_str(), "{claimed}");
    let delivery = claim["delivery"].as_u64().unwrap();
    let later = json!({"route": "worker", "attempt": delivery + 1, "claim": claim});
    assert_eq!(
        lane.post(&start, &later).0,
        403,
        "a delivery it does not hold"
    );
    let (status, started) = lane.post(
        &start,
        &json!({"route": "worker", "attempt": delivery, "claim": claim}),
    );
    assert_eq!(status, 200);
    assert_eq!(started["order"]["function"], "hello", "{started}");
    let job = Runner {
        s: &s,
        credential: started["credential"].as_str().unwrap().to_owned(),
    };
    assert!(job.credential.starts_with("wrc."), "{}", job.credential);
    assert_eq!(
        claimed["credential"], started["credential"],
        "the claim came with it"
    );
    let (status, _) = lane.post(&finish, &finish_body("by the lane"));
    assert_eq!(status, 403, "an end needs the claim's credential");
    let (status, _) = job.get(&format!("/internal/v1/modules/{module}"));
    assert_eq!(status, 200, "the claimed job's module");
    assert_eq!(
        job.post(&finish, &finish_body("by the claim")).1["stored"],
        true
    );
    assert_eq!(job.post("/internal/v1/queue/ack", &claim).1["acked"], true);
    assert_eq!(get_job(&s, &rival, &other, "5s")["status"], "succeeded");
    assert_eq!(result_of(&s, &rival, &other), "by the claim");
    let (status, _) = job.post(
        &format!("/internal/v1/jobs/{sleeper}/finish"),
        &finish_body("planted"),
    );
    assert_eq!(status, 403, "the claim's credential reaches no other job");
    assert_eq!(get_job(&s, &acme, &sleeper, "0s")["status"], "running");
}

#[test]
fn a_worker_run_by_hand_needs_only_its_lane_s_credential_from_the_cli() {
    // The worker on demand is busy, so the next job waits for a worker started by hand.
    let (s, sleeper_key, sleeper) = busy_worker("sleepy");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "echo", "echo", json!({}));
    let data = s.data_dir();
    let out = s.cli(&[
        "runner-credential",
        "--lane",
        "default",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(credential.starts_with("wrl.default."), "{credential}");
    let lane = Runner {
        s: &s,
        credential: credential.clone(),
    };
    let long = json!({"lane": "long", "lease_ms": 1000, "wait_ms": 0});
    assert_eq!(lane.post("/internal/v1/queue/claim", &long).0, 403);

    let id = submit(&s, &key, json!({"function": "echo", "input": "by hand"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = std::process::Command::new(wafer_e2e::wafer_bin())
        .args([
            "worker",
            "--server",
            &format!("http://{}", s.addr()),
            "--lane",
            "default",
        ])
        .args(["--max-jobs", "1", "--idle-ms", "20000"])
        .arg("--artifacts-dir")
        .arg(data.join("artifacts"))
        .arg("--scratch-dir")
        .arg(data.join("scratch"))
        .env_clear()
        .env("WAFER_RUNNER_TOKEN", &credential)
        .output()
        .unwrap();
    assert!(
        worker.status.success(),
        "{}",
        String::from_utf8_lossy(&worker.stderr)
    );
    let done = get_job(&s, &key, &id, "10s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["route"], "worker");
    assert!(result_of(&s, &key, &id).contains("by hand"));
    // The worker on demand is still on its sleep: the job was the hand-run worker's.
    assert_eq!(
        get_job(&s, &sleeper_key, &sleeper, "0s")["status"],
        "running"
    );

    // Without a server's data directory there is no credential, and the CLI says why.
    let empty = tempfile::tempdir().unwrap();
    let out = s.cli(&[
        "runner-credential",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runner key") && err.contains("runner.key"),
        "{err}"
    );
}
