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

#[test]
fn kill_during_an_upload_leaves_no_half_visible_module_or_version() {
    let mut s = TestServer::start();
    s.deploy("svc", "echo", json!({}));
    let bytes = function_bytes("hello");
    let sock = s.raw_upload(bytes.len(), &bytes[..bytes.len() / 2]);
    s.kill_and_restart();
    drop(sock);

    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let r = s
        .admin(Method::PUT, "/v1/functions/half")
        .json(&json!({"module": digest}))
        .send()
        .unwrap();
    assert_problem(r, 422, "module-not-found");
    let list: Value = s
        .admin(Method::GET, "/v1/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["svc"]);
    let versions: Value = s
        .admin(Method::GET, "/v1/functions/svc/versions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    let tmp = std::fs::read_dir(s.data_dir().join("artifacts/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "no partial artifact is left behind");
    assert_eq!(s.invoke("svc", b"fine").text().unwrap(), "fine");
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
