//! The long lane and routing: dedicated runners launched per job by each provisioner (local,
//! command, kubernetes), throttled overall and per tenant without delaying short jobs; a
//! runner that never starts; lanes chosen by class and learned estimates; synchronous calls
//! that outlast the inline budget answered 202.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wafer_e2e::jobs::{get_job, status, submit, wait_status};
use wafer_e2e::{TestServer, assert_problem};

/// Polls (bounded) until `n` dedicated runners are alive.
fn wait_dedicated(s: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(s)["runners"]["dedicated"] != n {
        assert!(
            Instant::now() < deadline,
            "dedicated runners never became {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_long_job_runs_on_a_runner_of_its_own_that_goes_away_after() {
    let s = TestServer::start_with_config("[jobs.long]\nmemory_mb = 96\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    assert_eq!(status(&s)["runners"]["dedicated"], 0);
    let job = submit(&s, &key, json!({"function": "batch", "input": 800}));
    assert_eq!(job["lane"], "long");
    assert_eq!(job["route"], "dedicated");
    assert!(
        job["route_reason"]
            .as_str()
            .unwrap()
            .contains("class is long")
    );
    let id = job["id"].as_str().unwrap();
    wait_status(&s, &key, id, "running");
    assert_eq!(status(&s)["runners"]["dedicated"], 1);
    assert!(
        s.metrics()
            .contains("wafer_runners_alive{kind=\"dedicated\"} 1")
    );
    let done = get_job(&s, &key, id, "30s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["route"], "dedicated");
    let r = s
        .with_key(&key, Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "awake\n");
    wait_dedicated(&s, 0);
    // Long jobs get the long lane's memory: four memories of 5 MiB (20 MiB) fail a version
    // limited to 16 MiB inline, and fit the long lane's 96 MiB.
    let big = wafer_e2e::wasm::memory_component(4, 5 * 16, false);
    s.deploy_bytes(&key, "big", big.clone(), json!({"memory_mb": 16}));
    let inline = submit(&s, &key, json!({"function": "big"}));
    let inline = get_job(&s, &key, inline["id"].as_str().unwrap(), "30s");
    assert_eq!(
        inline["error"]["type"], "https://wafer.dev/problems/memory-limit",
        "{inline}"
    );
    s.deploy_bytes(&key, "big", big, json!({"memory_mb": 16, "class": "long"}));
    let long = submit(&s, &key, json!({"function": "big"}));
    let long = get_job(&s, &key, long["id"].as_str().unwrap(), "30s");
    assert_eq!(long["status"], "succeeded", "{long}");
    assert_eq!(long["route"], "dedicated");
    // Long jobs may run longer than any worker job.
    let long = submit(
        &s,
        &key,
        json!({"function": "batch", "input": 1, "timeout_ms": 3_600_000}),
    );
    assert_eq!(
        get_job(&s, &key, long["id"].as_str().unwrap(), "30s")["status"],
        "succeeded"
    );
}

/// Waits for each of `jobs` (key, id) to succeed on a dedicated runner and asserts that no two
/// ran at once; their (start, end) times, in order.
fn one_at_a_time(s: &TestServer, jobs: &[(String, String)]) -> Vec<(u64, u64)> {
    let mut spans = Vec::new();
    for (k, id) in jobs {
        let j = get_job(s, k, id, "60s");
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["route"], "dedicated");
        let t = &j["timings"];
        spans.push((
            t["started_at_ms"].as_u64().unwrap(),
            t["finished_at_ms"].as_u64().unwrap(),
        ));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "long jobs overlapped: {spans:?}");
    }
    spans
}

#[test]
fn the_long_lane_is_throttled_per_tenant_and_overall_and_short_jobs_are_not_delayed() {
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 0\n[jobs.long]\nmax_runners = 2\nmax_per_tenant = 1\n",
    );
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "batch-a", "nap", json!({"class": "long"}));
    s.deploy_as(&b, "batch-b", "nap", json!({"class": "long"}));
    s.deploy_as(&a, "quick", "echo", json!({"timeout_ms": 1000}));
    let a_jobs: Vec<String> = (0..3)
        .map(|_| {
            submit(&s, &a, json!({"function": "batch-a", "input": 1200}))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let b_job = submit(&s, &b, json!({"function": "batch-b", "input": 1200}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_dedicated(&s, 2);
    // While the long lane is full, short jobs run at once.
    for i in 0..5 {
        let q = submit(&s, &a, json!({"function": "quick", "input": i}));
        let q = get_job(&s, &a, q["id"].as_str().unwrap(), "10s");
        assert_eq!(q["status"], "succeeded");
        assert_eq!(q["lane"], "fast");
        assert!(q["timings"]["wait_ms"].as_u64().unwrap() < 1000, "{q}");
    }
    assert_eq!(
        status(&s)["runners"]["dedicated"],
        2,
        "the long lane is still busy"
    );
    // One runner at a time for alpha: its jobs never overlap.
    let a_jobs: Vec<(String, String)> = a_jobs.into_iter().map(|id| (a.clone(), id)).collect();
    let spans = one_at_a_time(&s, &a_jobs);
    // Beta did not wait for all of alpha's jobs.
    let bj = get_job(&s, &b, &b_job, "30s");
    assert_eq!(bj["status"], "succeeded");
    assert!(
        bj["timings"]["started_at_ms"].as_u64().unwrap() < spans[1].0,
        "{bj} {spans:?}"
    );
    wait_dedicated(&s, 0);
}

#[test]
fn the_long_lane_s_overall_cap_holds_below_the_per_tenant_caps() {
    // Each tenant may have two runners, but the lane has one: no two long jobs ever overlap.
    let s = TestServer::start_with_config(
        "[jobs]\nworkers = 0\n[jobs.long]\nmax_runners = 1\nmax_per_tenant = 2\n",
    );
    let mut jobs = Vec::new();
    for t in ["alpha", "beta"] {
        let k = s.tenant_key(t);
        let f = format!("batch-{t}");
        s.deploy_as(&k, &f, "nap", json!({"class": "long"}));
        for _ in 0..2 {
            let id = submit(&s, &k, json!({"function": f, "input": 300}))["id"]
                .as_str()
                .unwrap()
                .to_owned();
            jobs.push((k.clone(), id));
        }
    }
    one_at_a_time(&s, &jobs);
    wait_dedicated(&s, 0);
}

#[test]
fn a_dedicated_runner_that_never_starts_fails_the_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let torn = dir.path().join("torn-down");
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"command\"\nstart_timeout_ms = 700\n\
         [jobs.long.command]\nlaunch = [\"/bin/sh\", \"-c\", \"echo vm-$WAFER_JOB_ID\"]\n\
         teardown = [\"/bin/sh\", \"-c\", \"echo $WAFER_RUNNER_HANDLE >> {}\"]\n",
        torn.display()
    ));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(&s, &key, json!({"function": "batch", "input": 1}));
    let id = job["id"].as_str().unwrap();
    let failed = get_job(&s, &key, id, "20s");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["error"]["type"],
        "https://wafer.dev/problems/runner-start-timeout"
    );
    assert!(
        failed["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("700 ms"),
        "{failed}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&torn)
        .unwrap_or_default()
        .contains(&format!("vm-{id}"))
    {
        assert!(Instant::now() < deadline, "the runner was never torn down");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_dedicated(&s, 0);

    // A launch command that fails, tracing the runner token it was given: the job fails at
    // once; what the command said is the operator's (the server log, token hidden), not the
    // tenant's.
    let s = TestServer::start_with_config(
        "[jobs.long]\nprovisioner = \"command\"\n\
         [jobs.long.command]\nlaunch = [\"/bin/sh\", \"-c\", \"echo quota exceeded >&2; echo token=$WAFER_RUNNER_TOKEN >&2; exit 3\"]\n",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(&s, &key, json!({"function": "batch", "input": 1}));
    // What the runner was given: its claim's credential.
    let token = format!("wrc.{}.", job["id"].as_str().unwrap());
    let token = token.as_str();
    let failed = get_job(&s, &key, job["id"].as_str().unwrap(), "20s");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["error"]["type"],
        "https://wafer.dev/problems/runner-launch-failed"
    );
    let text = failed.to_string();
    assert!(!text.contains("quota exceeded"), "{failed}");
    assert!(!text.contains(token), "{failed}");
    assert!(text.contains("server log"), "{failed}");
    let log = s.log();
    assert!(log.contains("quota exceeded"), "{log}");
    assert!(log.contains("token=***"), "{log}");
    assert!(!log.contains(token), "the credential never reaches the log");
}

#[test]
fn the_command_provisioner_launches_a_runner_with_everything_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let torn = dir.path().join("torn-down");
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"command\"\n\
         [jobs.long.command]\nlaunch = [\"/bin/sh\", \"-c\", \"nohup sh -c \\\"$WAFER_RUNNER_COMMAND\\\" >/dev/null 2>&1 & echo box-$WAFER_JOB_ID\"]\n\
         teardown = [\"/bin/sh\", \"-c\", \"echo $WAFER_RUNNER_HANDLE >> {}\"]\n",
        torn.display()
    ));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(&s, &key, json!({"function": "batch", "input": 300}));
    let id = job["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "30s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["route"], "dedicated");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&torn)
        .unwrap_or_default()
        .contains(&format!("box-{id}"))
    {
        assert!(Instant::now() < deadline, "the runner was never torn down");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_kubernetes_provisioner_applies_a_rendered_job_and_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for kubectl that keeps what it is given; no cluster runs the runner, so
    // the job fails for want of a start, and the Job is deleted.
    let kubectl = dir.path().join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  apply) cat > {d}/applied.json ;;\n  delete) echo \"$2 $3 $5\" > {d}/deleted ;;\nesac\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/runner-job.json");
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"kubernetes\"\nstart_timeout_ms = 500\n\
         [jobs.long.kubernetes]\ntemplate = \"{}\"\nnamespace = \"batch\"\nkubectl = [\"{}\"]\n",
        template.display(),
        kubectl.display()
    ));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(&s, &key, json!({"function": "batch", "input": 1}));
    let id = job["id"].as_str().unwrap();
    let failed = get_job(&s, &key, id, "20s");
    assert_eq!(
        failed["error"]["type"], "https://wafer.dev/problems/runner-start-timeout",
        "{failed}"
    );
    let list: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("applied.json")).unwrap())
            .unwrap();
    assert_eq!(list["kind"], "List");
    // The job's own Secret holds its claim's credential; the Job refers to it.
    let secret = &list["items"][0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["namespace"], "batch");
    let credential = secret["stringData"]["credential"].as_str().unwrap();
    assert!(
        credential.starts_with(&format!("wrc.{id}.")),
        "{credential}"
    );
    let applied = &list["items"][1];
    assert_eq!(applied["kind"], "Job");
    assert_eq!(applied["metadata"]["namespace"], "batch");
    assert_eq!(applied["metadata"]["labels"]["wafer.dev/job"], id);
    let env = applied["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let token = env
        .iter()
        .find(|e| e["name"] == "WAFER_RUNNER_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        secret["metadata"]["name"]
    );
    assert!(!applied.to_string().contains(credential));
    let claim = env.iter().find(|e| e["name"] == "WAFER_CLAIM").unwrap();
    let claim: Value = serde_json::from_str(claim["value"].as_str().unwrap()).unwrap();
    assert_eq!(claim["job"]["id"], id);
    let token = std::fs::read_to_string(s.data_dir().join("runner.key")).unwrap();
    assert!(
        !list.to_string().contains(token.trim()),
        "the runner key is not in the objects"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let name = applied["metadata"]["name"].as_str().unwrap();
    while std::fs::read_to_string(dir.path().join("deleted"))
        .unwrap_or_default()
        .trim()
        != format!("job/{name} secret/{name} batch")
    {
        assert!(Instant::now() < deadline, "the Job was never deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn estimates_learned_from_runs_route_jobs_and_send_long_calls_async() {
    let s = TestServer::start_with_config(
        "[jobs]\nfast_lane_ms = 200\nlong_lane_ms = 5000\ninline_budget_ms = 300\n",
    );
    let key = s.tenant_key("acme");
    s.deploy_as(
        &key,
        "nap",
        "nap",
        json!({"timeout_ms": 60000, "public": true}),
    );
    // No runs yet: the 60 s timeout stands in for the estimate, and a call runs inline.
    let first = submit(&s, &key, json!({"function": "nap", "input": 1}));
    assert_eq!(first["lane"], "long", "{first}");
    assert!(
        first["route_reason"]
            .as_str()
            .unwrap()
            .contains("no runs yet")
    );
    get_job(&s, &key, first["id"].as_str().unwrap(), "30s");
    let call = |prefer: Option<&str>| {
        let mut rb = s.with_key(&key, Method::POST, "/fn/nap").body("500");
        if let Some(p) = prefer {
            rb = rb.header("prefer", p);
        }
        rb.send().unwrap()
    };
    // Runs of 500 ms: the estimate is above the inline budget of 300 ms from now on.
    let r = call(None);
    assert_eq!(r.status(), 200);
    let r = call(None);
    assert_eq!(r.status(), 202, "runs longer than the budget become jobs");
    assert!(r.headers().get("preference-applied").is_none());
    let job: Value = r.json().unwrap();
    assert_eq!(job["lane"], "default", "{job}");
    assert!(
        job["route_reason"]
            .as_str()
            .unwrap()
            .contains("p95 of its last"),
        "{job}"
    );
    assert_eq!(
        get_job(&s, &key, job["id"].as_str().unwrap(), "30s")["status"],
        "succeeded"
    );
    // Prefer: wait opts out; callers who cannot own a job are answered inline too.
    let r = call(Some("wait"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "awake\n");
    let r = s.anon(Method::POST, "/fn/nap").body("10").send().unwrap();
    assert_eq!(r.status(), 200);
    // A short class keeps jobs off the long lane whatever the estimate.
    s.deploy_as(
        &key,
        "nap",
        "nap",
        json!({"timeout_ms": 60000, "class": "short"}),
    );
    let j = submit(&s, &key, json!({"function": "nap", "input": 1}));
    assert_eq!(j["lane"], "default", "{j}");
    let r = s
        .with_key(&key, Method::PUT, "/v1/functions/nap")
        .json(&json!({"module": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "class": "medium"}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
}
