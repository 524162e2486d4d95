//! The `wafer` CLI end to end against a real server.

use serde_json::Value;
use wafer_e2e::{TestServer, function};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn deploy_invoke_list_rollback_and_remove() {
    let s = TestServer::start();
    let hello = function("hello");
    let echo = function("echo");
    let o = s.cli(&[
        "deploy",
        "greet",
        hello.to_str().unwrap(),
        "--timeout",
        "2s",
        "--memory",
        "32MiB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("deployed greet version 1"),
        "{}",
        stdout(&o)
    );
    let o = s.cli(&["invoke", "greet", "--path", "/?name=cli"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, cli!\n");

    let o = s.cli(&[
        "deploy",
        "greet",
        echo.to_str().unwrap(),
        "--env",
        "A=1",
        "--fuel",
        "5000000000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["invoke", "greet", "--data", "payload"]);
    assert_eq!(stdout(&o), "payload");

    let o = s.cli(&["versions", "greet", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["timeout_ms"], 2000);
    assert_eq!(versions[0]["memory_mb"], 32);
    assert_eq!(versions[1]["fuel"], 5_000_000_000u64);
    assert_eq!(versions[1]["env_keys"], serde_json::json!(["A"]));

    let o = s.cli(&["rollback", "greet", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&s.cli(&["invoke", "greet"])), "Hello, world!\n");

    let o = s.cli(&["ls", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["functions"][0]["name"], "greet");
    assert_eq!(v["functions"][0]["aliases"]["latest"], 1);
    assert!(stdout(&s.cli(&["ls"])).contains("greet"));

    let o = s.cli(&["rm", "greet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["invoke", "greet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Function not found (404)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn invoke_reads_data_from_a_file_and_stdin_and_sends_headers() {
    let s = TestServer::start();
    s.cli_deploy("echo", "echo");
    let file = s.data_dir().join("../body.bin");
    std::fs::write(&file, b"from a file").unwrap();
    let arg = format!("@{}", file.display());
    assert_eq!(
        stdout(&s.cli(&["invoke", "echo", "-d", &arg])),
        "from a file"
    );
    let mut child = std::process::Command::new(wafer_e2e::wafer_bin())
        .args(["invoke", "echo", "-d", "-", "-H", "x-test: 1", "-X", "PUT"])
        .env("WAFER_URL", &s.url)
        .env("WAFER_API_KEY", &s.admin_key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "from stdin");
    // -H, -X and --path reach a function that looks at them.
    s.cli_deploy("peek", "inspect");
    let o = s.cli(&[
        "invoke",
        "peek",
        "-X",
        "PATCH",
        "-H",
        "x-test: 1",
        "--path",
        "/a/b?c=d",
        "-d",
        "xyz",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["headers"]["x-test"], "1");
    assert_eq!(seen["path"], "/a/b?c=d");
    assert_eq!(seen["body_len"], 3);
}

#[test]
fn large_uploads_show_progress_on_a_terminal_only() {
    // The Python component compiles for about 23 s of CPU: room for that on a loaded machine.
    let s = TestServer::start_with_config("compile_timeout_ms = 90000\n");
    let py = wafer_e2e::function("pyhello");
    // `script` runs the CLI on a pseudo-terminal, as a person at a terminal would.
    let o = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} deploy big {}",
            wafer_e2e::wafer_bin().display(),
            py.display()
        ))
        .arg("/dev/null")
        .env("WAFER_URL", &s.url)
        .env("WAFER_API_KEY", &s.admin_key)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("uploading") && shown.contains("(100%)"),
        "{shown}"
    );
    assert!(shown.contains("deployed big version 1"), "{shown}");
    // Not on a pipe: the output stays clean for scripts.
    let o = s.cli(&["deploy", "big", py.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("uploading"), "{}", stderr(&o));
}

#[test]
fn failures_exit_nonzero_with_the_problem_on_stderr() {
    let s = TestServer::start();
    s.cli_deploy("fail", "fail");
    let o = s.cli(&["invoke", "fail", "-d", "oops"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("Function exited with an error (502)"), "{err}");
    assert!(err.contains("something went wrong: oops"), "{err}");
    assert!(o.stdout.is_empty());

    // A file that is not wasm.
    let bogus = s.data_dir().join("../bogus.wasm");
    std::fs::write(&bogus, b"nope").unwrap();
    let o = s.cli(&["deploy", "x", bogus.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Not WebAssembly (422)"),
        "{}",
        stderr(&o)
    );
    // Bad flags are usage errors.
    let o = s.cli(&["deploy", "x", bogus.to_str().unwrap(), "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    let o = s.cli(&["deploy", "x", bogus.to_str().unwrap(), "--env", "novalue"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A missing file.
    let o = s.cli(&["deploy", "x", "/nonexistent.wasm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("reading /nonexistent.wasm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_cli_finds_the_admin_key_in_the_data_directory() {
    let s = TestServer::start();
    let dir = s.data_dir();
    let o = s.cli_with(&["ls", "--data-dir", dir.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without a key or a data directory holding one: 401, exit 1.
    let o = s.cli_with(&["ls", "--data-dir", "/nonexistent"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Unauthorized (401)"), "{}", stderr(&o));
}

#[test]
fn an_unreachable_server_exits_3() {
    let s = TestServer::start();
    let o = s.cli_with(
        &["ls", "--url", "http://127.0.0.1:9"],
        &[("WAFER_API_KEY", "wfr_x")],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

#[test]
fn keys_create_makes_a_working_tenant_key() {
    let s = TestServer::start();
    let o = s.cli(&["keys", "create", "--tenant", "team-a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = stdout(&o).trim().to_owned();
    assert!(key.starts_with("wfr_"));
    let echo = function("echo");
    let o = s.cli_with(
        &["deploy", "mine", echo.to_str().unwrap()],
        &[("WAFER_API_KEY", &key)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli_with(&["ls", "--json"], &[("WAFER_API_KEY", &key)]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["functions"][0]["tenant"], "team-a");
}

#[test]
fn logs_show_what_a_function_printed() {
    let s = TestServer::start();
    s.cli_deploy("fail", "fail");
    assert_eq!(
        s.cli(&["invoke", "fail", "-d", "remember me"])
            .status
            .code(),
        Some(1)
    );
    let o = s.cli(&["logs", "fail"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nonzero-exit"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("something went wrong: remember me"),
        "{}",
        stdout(&o)
    );
}
