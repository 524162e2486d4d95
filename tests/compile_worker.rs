//! The compile worker is a boundary: it runs untrusted bytes through Cranelift with an empty
//! environment, no inherited descriptors, no new privileges, and (Landlock) no file outside its
//! scratch directory.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use wafer_e2e::wasm::bombs;
use wafer_e2e::{TestServer, children, function_bytes, wafer_bin};

#[test]
fn the_waiting_worker_has_no_environment_descriptors_or_privileges_of_the_server() {
    let s = TestServer::start();
    // Use the first worker, so the waiting one was started by the running server.
    assert_eq!(s.upload(&s.admin_key, function_bytes("echo")).status(), 201);
    let worker = (0..200)
        .find_map(|_| {
            let c = children(s.pid());
            if c.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            c.first().copied()
        })
        .expect("a waiting compile worker");
    // Found right after its fork it is still the server's image (with the pipe that reports
    // a failed exec): look once it runs the worker's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read(format!("/proc/{worker}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|arg| arg == b"__compile")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        ["WAFER_COMPILE_ENGINE_CONFIG"],
        "the worker's environment"
    );
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    let targets: Vec<String> = fds
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/{worker}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(fds, [0, 1, 2], "the worker's descriptors: {targets:?}");
    // The server does hold its database and listening socket open: none of it reached.
    let server_fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count();
    assert!(server_fds > 3, "{server_fds}");
    assert!(s.log().contains("confinement=Some(Full)"), "{}", s.log());
}

fn compile_in(confine: &Path, input: &Path, output: &Path) -> (bool, Value) {
    let out = Command::new(wafer_bin())
        .arg("__compile")
        .arg(input)
        .arg(output)
        .arg("--confine")
        .arg(confine)
        .env_clear()
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), report)
}

#[test]
fn a_confined_worker_reaches_nothing_outside_its_scratch_directory() {
    let root = tempfile::tempdir().unwrap();
    let scratch = root.path().join("scratch");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(scratch.join("in.wasm"), function_bytes("echo")).unwrap();
    std::fs::write(outside.join("in.wasm"), function_bytes("echo")).unwrap();

    let (ok, report) = compile_in(&scratch, &scratch.join("in.wasm"), &scratch.join("out"));
    assert!(ok, "{report}");
    assert_eq!(report["Compiled"]["confinement"], "Full", "{report}");
    assert!(scratch.join("out").exists());

    let (ok, report) = compile_in(&scratch, &outside.join("in.wasm"), &scratch.join("out2"));
    assert!(!ok, "read a file outside its scratch directory: {report}");
    assert!(report.to_string().contains("ermission denied"), "{report}");

    let (ok, report) = compile_in(&scratch, &scratch.join("in.wasm"), &outside.join("out"));
    assert!(!ok, "wrote a file outside its scratch directory: {report}");
    assert!(!outside.join("out").exists());
}

/// CPU time a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the comm.
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

/// The compile scratch files present now.
fn scratch_files(s: &TestServer) -> Vec<String> {
    std::fs::read_dir(s.data_dir().join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn an_upload_abandoned_mid_compile_leaves_no_scratch_file_and_no_worker() {
    let s = TestServer::start();
    // The Python component takes seconds to compile: long enough to leave in the middle.
    let bytes = function_bytes("pyhello");
    let sock = s.raw_upload(bytes.len(), &bytes);
    // Compiling: the scratch input is whole and the worker has burnt CPU on it since.
    let worker = (0..400)
        .find_map(|_| {
            let whole = std::fs::read_dir(s.data_dir().join("scratch"))
                .unwrap()
                .any(|e| e.unwrap().metadata().unwrap().len() == bytes.len() as u64);
            let c = children(s.pid());
            if whole && c.len() == 1 {
                return Some(c[0]);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            None
        })
        .expect("the compile never started");
    let at_start = cpu_ticks(worker);
    let busy = (0..500).any(|_| {
        let busy = cpu_ticks(worker) >= at_start + 20;
        if !busy {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        busy
    });
    assert!(busy, "the worker never started compiling");
    let workers_while_compiling = vec![worker];
    drop(sock);
    let cleaned = (0..500).any(|_| {
        let done = scratch_files(&s).is_empty()
            && !children(s.pid()).contains(&workers_while_compiling[0]);
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        done
    });
    assert!(
        cleaned,
        "left behind: files {:?}, workers {:?} (compiling: {workers_while_compiling:?}); log: {}",
        scratch_files(&s),
        children(s.pid()),
        s.log()
    );
    s.assert_still_serving();
}

/// Uploads `bytes`, asserting the refusal; returns how long it took and the problem.
fn refused(s: &TestServer, bytes: Vec<u8>, slug: &str) -> (std::time::Duration, Value) {
    let started = std::time::Instant::now();
    let v = wafer_e2e::assert_problem(s.upload(&s.admin_key, bytes), 422, slug);
    (started.elapsed(), v)
}

#[test]
fn a_known_compile_bomb_is_refused_before_any_worker_runs() {
    let s = TestServer::start();
    // 1 000 locals live across 20 000 joins: > 4 GiB and 9 s in Cranelift.
    let (took, v) = refused(&s, bombs::diamonds(1000, 20_000), "too-complex");
    println!("locals x blocks bomb refused in {took:?}: {}", v["detail"]);
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    assert!(v["detail"].as_str().unwrap().contains("1000 locals"), "{v}");
    s.assert_still_serving();
}

#[test]
fn a_slow_compile_is_ended_at_the_time_limit_and_its_worker_killed() {
    let s = TestServer::start_with_config("compile_timeout_ms = 2000\n");
    assert_eq!(s.upload(&s.admin_key, function_bytes("echo")).status(), 201);
    let waiting = children(s.pid());
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    // Within the screen's bound, but 5 s and 1.3 GB of compiling.
    let (took, v) = refused(&s, bombs::diamonds(400, 9000), "compile-timeout");
    println!("slow module refused in {took:?}");
    assert_eq!(v["limit"], 2000);
    assert!(took >= std::time::Duration::from_millis(1900), "{took:?}");
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    let gone = (0..200).any(|_| {
        let gone = !children(s.pid()).contains(&waiting[0]);
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        gone
    });
    assert!(gone, "the worker outlived its time limit");
    s.assert_still_serving();
}

#[test]
fn a_memory_hungry_compile_is_ended_at_the_memory_limit() {
    let s = TestServer::start_with_config("compile_memory_mb = 768\n");
    // The worker starts and compiles ordinary modules within 768 MiB...
    assert_eq!(s.upload(&s.admin_key, function_bytes("echo")).status(), 201);
    let waiting = children(s.pid());
    // ...but this one needs 1.3 GB.
    let (took, v) = refused(&s, bombs::diamonds(400, 9000), "compile-resources");
    println!("memory-hungry module refused in {took:?}: {}", v["detail"]);
    assert!(
        !children(s.pid()).contains(&waiting[0]),
        "the worker outlived its refusal"
    );
    s.assert_still_serving();
}
