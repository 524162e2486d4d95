//! Durability: a restart keeps everything; a kill -9 mid-upload leaves nothing half-visible.

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use wafer_e2e::{TestServer, assert_problem, function_bytes};

#[test]
fn first_start_prints_the_admin_key_once_and_stores_it_private() {
    let mut s = TestServer::start();
    let printed = s.first_stdout.join("\n");
    assert!(printed.contains(&s.admin_key), "{printed}");
    let mode = std::fs::metadata(s.data_dir().join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = s.kill_and_restart().join("\n");
    assert!(
        !again.contains("wfr_"),
        "the key is printed only on first start: {again}"
    );
    let still = std::fs::read_to_string(s.data_dir().join("admin.key")).unwrap();
    assert_eq!(still.trim(), s.admin_key);
}

#[test]
fn a_restart_keeps_functions_versions_aliases_and_keys() {
    let mut s = TestServer::start();
    let a = s.tenant_key("alpha");
    s.deploy_as(&a, "svc", "echo", json!({"env": {"MODE": "one"}}));
    s.deploy_as(&a, "svc", "hello", json!({"public": true}));
    let r = s
        .with_key(&a, Method::PUT, "/v1/functions/svc/aliases/prod")
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let compiled_before = s.log().matches("compiled module").count();
    s.kill_and_restart();

    let f: Value = s
        .with_key(&a, Method::GET, "/v1/functions/svc")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(f["latest_version"], 2);
    assert_eq!(f["aliases"], json!({"latest": 2, "prod": 1}));
    // Both ABIs run from the compiled artifacts on disk, without recompiling.
    assert_eq!(
        s.with_key(&a, Method::POST, "/fn/svc@prod")
            .body("kept")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "kept"
    );
    assert_eq!(
        s.anon(Method::GET, "/fn/svc?name=again")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "Hello, again!\n"
    );
    let m = s.metrics();
    assert!(
        m.contains(r#"wafer_cold_starts_total{function="svc"} 2"#),
        "{m}"
    );
    // Re-uploading a known module is a 200, not a new compile.
    assert_eq!(s.upload(&a, function_bytes("echo")).status(), 200);
    assert_eq!(
        s.log().matches("compiled module").count(),
        compiled_before,
        "a restart or a re-upload compiled something again"
    );
}

#[test]
fn compiled_code_of_another_engine_is_rebuilt_never_a_500() {
    let mut s = TestServer::start();
    s.deploy("first", "hello", json!({"public": true}));
    s.deploy("second", "echo", json!({}));
    s.kill();
    // An upgrade changes the engine fingerprint: the code on disk is then another engine's.
    let compiled = s.data_dir().join("artifacts/compiled");
    let current: Vec<_> = std::fs::read_dir(&compiled)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(current.len(), 1, "{current:?}");
    std::fs::rename(&current[0], compiled.join("0123456789abcdef01234567")).unwrap();
    s.kill_and_restart();
    // On demand: the first invocation rebuilds its module and answers.
    let r = s.anon(Method::GET, "/fn/first?name=again").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello, again!\n");
    // In the background: the other module is rebuilt without being invoked.
    let echo = format!(
        "{}.cwasm",
        hex::encode(Sha256::digest(function_bytes("echo")))
    );
    let rebuilt = (0..300).any(|_| {
        let found = std::fs::read_dir(&compiled)
            .unwrap()
            .any(|d| d.unwrap().path().join(&echo).exists());
        if !found {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    });
    assert!(
        rebuilt,
        "echo was not recompiled in the background: {}",
        s.log()
    );
    assert_eq!(
        s.invoke("second", b"still here").text().unwrap(),
        "still here"
    );
    assert!(s.log().contains("recompiling for this engine"));
}

/// Live processes whose command line mentions `needle` (compile workers name their scratch
/// directory, inside the server's data directory).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Deploys `steady`, restarts the server so that it crashes at `point`, runs `action`
/// (which must reach the point), checks that the server died and left no compile worker,
/// and restarts it normally.
fn crash_at(point: &str, action: impl FnOnce(&TestServer)) -> TestServer {
    let mut s = TestServer::start();
    s.deploy("steady", "echo", json!({}));
    s.set_env(&[("WAFER_CRASH_AT", point)]);
    s.kill_and_restart();
    action(&s);
    assert!(
        s.wait_for_exit().is_some(),
        "the server did not crash at {point}"
    );
    let scratch = s.data_dir().join("scratch").display().to_string();
    let left = processes_mentioning(&scratch);
    assert!(
        left.is_empty(),
        "compile workers outlived the server: {left:?}"
    );
    s.set_env(&[]);
    s.kill_and_restart();
    // Whatever else happened, the version deployed before still runs.
    assert_eq!(s.invoke("steady@1", b"still").text().unwrap(), "still");
    s
}

fn digest_of(file: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(function_bytes(file)))
    )
}

fn put_version(s: &TestServer, name: &str, file: &str) -> reqwest::blocking::Response {
    s.admin(Method::PUT, &format!("/v1/functions/{name}"))
        .json(&json!({"module": digest_of(file)}))
        .send()
        .unwrap()
}

#[test]
fn a_crash_while_compiling_records_nothing_and_leaves_no_worker() {
    // A module that takes seconds to compile: its worker is still busy when the server dies.
    let slow = wafer_e2e::wasm::bombs::diamonds(400, 9000);
    let slow_digest = format!("sha256:{}", hex::encode(Sha256::digest(&slow)));
    let s = crash_at("compiling", |s| {
        assert!(s.upload_result(slow).is_err());
    });
    let r = s
        .admin(Method::PUT, "/v1/functions/half")
        .json(&json!({"module": slow_digest}))
        .send()
        .unwrap();
    assert_problem(r, 422, "module-not-found");
    assert_eq!(
        s.upload(&s.admin_key, function_bytes("hello")).status(),
        201
    );
    assert_eq!(put_version(&s, "half", "hello").status(), 201);
    assert_eq!(
        s.admin(Method::GET, "/fn/half").send().unwrap().status(),
        200
    );
}

#[test]
fn a_crash_between_storing_artifacts_and_recording_the_module_records_nothing() {
    let s = crash_at("artifacts-stored", |s| {
        assert!(s.upload_result(function_bytes("hello")).is_err());
    });
    assert_problem(put_version(&s, "half", "hello"), 422, "module-not-found");
    // The stored code is found again rather than compiled a second time.
    let compiled_before = s.log().matches("compiled module").count();
    assert_eq!(
        s.upload(&s.admin_key, function_bytes("hello")).status(),
        201
    );
    assert_eq!(s.log().matches("compiled module").count(), compiled_before);
    assert_eq!(put_version(&s, "half", "hello").status(), 201);
    assert_eq!(
        s.admin(Method::GET, "/fn/half").send().unwrap().status(),
        200
    );
}

/// Uploads hello and deploys it as version 2 of `steady`, which must crash the server.
fn deploy_hello_as_steady_v2(s: &TestServer) {
    assert!(
        s.upload(&s.admin_key, function_bytes("hello"))
            .status()
            .is_success()
    );
    let r = s
        .admin(Method::PUT, "/v1/functions/steady")
        .json(&json!({"module": digest_of("hello")}))
        .send();
    assert!(
        r.is_err(),
        "the server answered: {:?}",
        r.map(|r| r.status())
    );
}

#[test]
fn a_crash_while_writing_a_version_leaves_it_absent() {
    let s = crash_at("version-written", deploy_hello_as_steady_v2);
    let versions: Value = s
        .admin(Method::GET, "/v1/functions/steady/versions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
}

#[test]
fn a_crash_after_committing_a_version_leaves_it_whole_and_invocable() {
    let s = crash_at("version-committed", deploy_hello_as_steady_v2);
    let r = s
        .admin(Method::GET, "/fn/steady?name=after")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-wafer-version"], "2");
    assert_eq!(r.text().unwrap(), "Hello, after!\n");
}

/// Starts `POST /fn/nap` with `body` (milliseconds to sleep) on a thread.
fn nap_call(
    s: &TestServer,
    body: &'static str,
) -> std::thread::JoinHandle<Result<(u16, String), String>> {
    let url = format!("{}/fn/nap", s.url);
    let key = s.admin_key.clone();
    std::thread::spawn(move || {
        let r = reqwest::blocking::Client::new()
            .post(url)
            .bearer_auth(key)
            .body(body)
            .send()
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().map_err(|e| e.to_string())?))
    })
}

#[test]
fn sigterm_lets_a_running_call_succeed_and_refuses_new_connections() {
    let mut s = TestServer::start();
    s.deploy("nap", "nap", json!({"timeout_ms": 10000}));
    let call = nap_call(&s, "1500");
    assert!(s.wait_in_flight(1), "the invocation never started");
    s.signal(libc::SIGTERM);
    // The listener closes at once: new connections are refused while the call still runs.
    let started = std::time::Instant::now();
    let refused = loop {
        if std::net::TcpStream::connect(s.addr()).is_err() {
            break true;
        }
        if started.elapsed() > std::time::Duration::from_secs(1) {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        refused,
        "new connections were still accepted during the drain"
    );
    assert!(
        !call.is_finished(),
        "the call ended before the listener closed"
    );
    assert_eq!(call.join().unwrap().unwrap(), (200, "awake\n".to_owned()));
    let status = s.wait_exit();
    assert!(status.success(), "wafer serve exited with {status}");
}

#[test]
fn the_drain_ends_at_its_deadline() {
    let mut s = TestServer::start_with_config("shutdown_grace_ms = 1000\n");
    s.deploy("nap", "nap", json!({"timeout_ms": 60000}));
    let call = nap_call(&s, "30000");
    assert!(s.wait_in_flight(1), "the invocation never started");
    let started = std::time::Instant::now();
    let status = s.terminate();
    let took = started.elapsed();
    println!("exited {took:?} after SIGTERM with a 30 s call in flight");
    assert!(status.success(), "wafer serve exited with {status}");
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(10),
        "the drain took {took:?} with a grace of 1 s"
    );
    assert!(
        call.join().unwrap().is_err(),
        "the cut-off call got an answer"
    );
}
