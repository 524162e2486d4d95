//! The guest side of the `vm` provisioner, for real: Debian's kernel boots in a qemu microVM
//! under TCG with the `wafer` binary under test as `/init`, and the guest agent answers on its
//! virtio-serial port; and long jobs submitted through the API run in such a VM when the long
//! lane's provisioner is `vm`.

use serde_json::{Value, json};
use sha2::Digest as _;
use std::time::Duration;
use wafer_e2e::TestServer;
use wafer_e2e::jobs::{get_job, submit};
use wafer_e2e::vm::{Agent, Vm, image};

/// Under TCG on 2 loaded cores a boot takes seconds; this bounds it generously.
const BOOT: Duration = Duration::from_secs(60);

#[test]
fn the_guest_agent_boots_reports_its_kernel_answers_and_powers_off() {
    let img = image();
    let mut vm = Vm::boot(&img.kernel, &img.initramfs);
    let mut agent = vm.connect(Duration::from_secs(10));
    let ready = agent
        .read(BOOT)
        .unwrap_or_else(|| panic!("the agent never said ready; console:\n{}", vm.console()));
    let booted = vm.started.elapsed();
    assert_eq!(ready["agent"], "ready", "{ready}");
    assert_eq!(ready["kernel"], img.release.as_str(), "{ready}");
    let boot_ms = ready["boot_ms"].as_u64().expect("boot_ms");
    assert!(boot_ms > 0 && boot_ms < BOOT.as_millis() as u64, "{ready}");
    println!(
        "guest {} ready {booted:?} after qemu started ({boot_ms} ms after the kernel did)",
        img.release
    );
    agent.send(&json!({"op": "ping"}));
    let pong = agent.read(Duration::from_secs(10)).expect("pong");
    assert_eq!(pong["op"], "pong");
    assert!(pong["uptime_ms"].as_u64().unwrap() >= boot_ms, "{pong}");
    agent.send(&json!({"op": "nonsense"}));
    let refused = agent.read(Duration::from_secs(10)).expect("an answer");
    assert!(
        refused["error"].as_str().unwrap().contains("unknown op"),
        "{refused}"
    );
    agent.send(&json!({"op": "poweroff"}));
    let status = vm
        .wait(Duration::from_secs(30))
        .expect("qemu did not exit after the guest powered off");
    assert!(status.success(), "qemu exited with {status}");
}

#[test]
fn a_guest_that_never_boots_is_seen_as_such_and_its_vm_is_gone_after() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.cpio.gz");
    std::fs::write(&broken, b"this is not an initramfs").unwrap();
    let mut vm = Vm::boot(&img.kernel, &broken);
    let mut agent = vm.connect(Duration::from_secs(10));
    // No agent: nothing arrives on the port (the kernel finds no init and panics).
    assert!(agent.read(Duration::from_secs(20)).is_none());
    drop(agent);
    // The VM ends by itself: the kernel panics (panic=-1) and qemu does not reboot it.
    let status = vm.wait(Duration::from_secs(30));
    let console = vm.console();
    assert!(
        status.is_some(),
        "qemu did not end by itself after the panic; console:\n{console}"
    );
    assert!(console.contains("Kernel panic"), "console:\n{console}");
}

/// A run request for a job of the test function `name` with `input`, as the host side sends.
fn run_request(name: &str, input: &[u8], timeout_ms: u64) -> Value {
    use base64::Engine as _;
    let module = std::fs::read(wafer_e2e::function(name)).unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&module)));
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "op": "run",
        "order": {
            "job": "job_0123456789abcdef0123456789abcdef",
            "function": name,
            "version": 1,
            "module": digest,
            "abi": "command",
            "timeout_ms": timeout_ms,
            "fuel": 10_000_000_000u64,
            "memory_mb": 64,
            "stdout_bytes": 1 << 20,
            "stderr_bytes": 4096,
            "response_bytes": 1 << 20,
            "env": [],
            "request": {"method": "POST", "path": "/", "headers": []},
        },
        "module_base64": b64.encode(&module),
        "input_base64": b64.encode(input),
    })
}

fn ready_agent(vm: &Vm) -> Agent {
    let mut agent = vm.connect(Duration::from_secs(10));
    let ready = agent
        .read(BOOT)
        .unwrap_or_else(|| panic!("the agent never said ready; console:\n{}", vm.console()));
    assert_eq!(ready["agent"], "ready", "{ready}");
    agent
}

/// The agent's answers to a run request: first that the job started (once compiled), then its
/// end, which is returned.
fn job_end(agent: &mut Agent) -> Value {
    let started = agent
        .read(Duration::from_secs(120))
        .expect("the job's start");
    assert_eq!(started["op"], "started", "{started}");
    assert!(started["compile_ms"].is_u64(), "{started}");
    agent.read(Duration::from_secs(120)).expect("the job's end")
}

#[test]
fn a_job_runs_inside_the_guest_under_the_same_limits() {
    use base64::Engine as _;
    let img = image();
    let mut vm = Vm::boot(&img.kernel, &img.initramfs);
    let mut agent = ready_agent(&vm);
    // Code compiled for another engine or CPU (another fingerprint) is not used: the guest
    // compiles.
    let mut stress = run_request("stress", br#"{"force":1000,"section":10}"#, 30_000);
    stress["compiled"] = json!({"fingerprint": "0123456789abcdef01234567", "code_base64": "AAAA"});
    agent.send(&stress);
    let end = job_end(&mut agent);
    assert_eq!(end["op"], "end", "{end}");
    assert_eq!(end["end"]["status"], "succeeded", "{end}");
    assert_eq!(end["precompiled"], false, "{end}");
    assert_eq!(
        end["offered_fingerprint"], "0123456789abcdef01234567",
        "{end}"
    );
    let fingerprint = end["fingerprint"].as_str().unwrap().to_owned();
    assert_ne!(fingerprint, "0123456789abcdef01234567");
    let output = base64::engine::general_purpose::STANDARD
        .decode(end["output_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(output, br#"{"stress":100.0}"#);
    println!(
        "stress in the guest: compiled in {} ms, ran in {} ms",
        end["compile_ms"], end["run_ms"]
    );
    // An endless loop ends at its deadline inside the guest too, with the server's problem.
    // Code that claims this guest's fingerprint but does not load is compiled again.
    let mut spin = run_request("spin", b"", 1000);
    spin["compiled"] = json!({"fingerprint": fingerprint, "code_base64": "bm90IGNvZGU="});
    agent.send(&spin);
    let end = job_end(&mut agent);
    assert_eq!(end["end"]["status"], "failed", "{end}");
    assert_eq!(
        end["end"]["error"]["type"], "https://wafer.dev/problems/timeout",
        "{end}"
    );
    assert_eq!(end["precompiled"], false, "{end}");
    // A module that is not the one the order names is refused, and the agent carries on.
    let mut wrong = run_request("echo", b"", 1000);
    wrong["order"]["module"] = json!(format!("sha256:{}", "0".repeat(64)));
    agent.send(&wrong);
    let refused = agent.read(Duration::from_secs(60)).expect("an answer");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("the order names"),
        "{refused}"
    );
    agent.send(&json!({"op": "poweroff"}));
    assert!(
        vm.wait(Duration::from_secs(30))
            .expect("qemu exits")
            .success()
    );
}

/// No qemu process is left that was started from `dir` (the server's data directory).
fn qemu_left(marker: &str) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(marker) {
            left.push(cmdline);
        }
    }
    left
}

/// Waits until a qemu named for `marker` runs, or panics after `within`.
fn wait_for_qemu(marker: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while qemu_left(marker).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no qemu was started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no qemu named for `marker` runs, or panics after `within`.
fn wait_no_qemu(marker: &str, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while !qemu_left(marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a qemu outlived {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server whose long lane runs in VMs named `name`, emulated (no probe), with `long`
/// lines in `[jobs.long]`.
fn vm_server(name: &str, long: &str) -> TestServer {
    TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"vm\"\n{long}[jobs.long.vm]\nimage = \"{}\"\naccel = \"tcg\"\n\
         name = \"{name}\"\n",
        image().json.display()
    ))
}

#[test]
fn a_long_job_routed_to_the_vm_provisioner_runs_in_a_vm_of_its_own() {
    let img = image();
    // The provisioner comes from the environment; acceleration is probed (`auto`).
    let s = TestServer::start_with(
        &format!("[jobs.long.vm]\nimage = \"{}\"\n", img.json.display()),
        &[("WAFER_LONG_PROVISIONER", "vm")],
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "sim", "stress", json!({"class": "long"}));
    let job = submit(
        &s,
        &key,
        json!({"function": "sim", "input": {"force": 1000, "section": 10}}),
    );
    assert_eq!(job["route"], "dedicated", "{job}");
    let id = job["id"].as_str().unwrap();
    let done = get_job(&s, &key, id, "120s");
    assert_eq!(done["status"], "succeeded", "{done}");
    // The record proves where it ran: the guest's kernel and boot time.
    let runner = &done["runner"];
    assert_eq!(runner["kind"], "vm", "{done}");
    assert_eq!(runner["kernel"], img.release.as_str(), "{done}");
    assert!(runner["guest_boot_ms"].as_u64().unwrap() > 0, "{done}");
    // Emulated, the guest's CPU is not the host's: it compiled the module itself.
    if runner["accel"] == "tcg" {
        assert_eq!(runner["precompiled"], false, "{done}");
        assert!(runner["compile_ms"].as_u64().unwrap() > 0, "{done}");
    }
    println!("job in a VM: {runner}");
    let r = s
        .with_key(&key, reqwest::Method::GET, &format!("/v1/jobs/{id}/result"))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), r#"{"stress":100.0}"#);
    // The acceleration the probe chose is in the metrics and on the job; here KVM makes
    // no progress (or is missing), so it is TCG.
    let metrics = s.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("wafer_vm_accel{"))
        .unwrap_or_else(|| panic!("no wafer_vm_accel in\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    let accel = runner["accel"].as_str().unwrap();
    assert!(
        line.contains(&format!("accel=\"{accel}\"")),
        "{line} vs {runner}"
    );
    if std::path::Path::new("/dev/kvm").exists() {
        assert!(
            line.contains("probe=\"no-progress\"") || line.contains("probe=\"ok\""),
            "{line}"
        );
    }
    assert!(s.log().contains("VM acceleration chosen"), "{}", s.log());
    // Its VM is gone with it.
    wait_no_qemu(
        img.initramfs.to_str().unwrap(),
        Duration::from_secs(20),
        "its job",
    );
}

#[test]
fn cancelling_a_vm_job_or_passing_its_deadline_ends_its_vm() {
    let name = "wafer-test-cancel";
    // One VM on this host at once (the long lane's throttle).
    let s = vm_server(name, "max_runners = 1\n");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    // A job asleep in its guest for a minute, cancelled once its VM runs.
    let job = submit(
        &s,
        &key,
        json!({"function": "batch", "input": 60_000, "timeout_ms": 120_000}),
    );
    let id = job["id"].as_str().unwrap();
    // A sleep past the job's deadline, queued behind it.
    let late = submit(
        &s,
        &key,
        json!({"function": "batch", "input": 60_000, "timeout_ms": 2_000}),
    );
    let late = late["id"].as_str().unwrap();
    wait_for_qemu(name, Duration::from_secs(30));
    wafer_e2e::jobs::wait_status(&s, &key, id, "running");
    assert_eq!(qemu_left(name).len(), 1, "more than one VM at once");
    let r = s
        .with_key(&key, reqwest::Method::DELETE, &format!("/v1/jobs/{id}"))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // The cancelled job's VM is gone (the next one may have started meanwhile).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while qemu_left(name).iter().any(|c| c.contains(id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "a qemu outlived its cancelled job"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cancelled = get_job(&s, &key, id, "1s");
    assert_eq!(cancelled["status"], "cancelled");
    // The sleep past its deadline ends there, inside the guest, and its VM with it.
    let done = get_job(&s, &key, late, "120s");
    // One VM at once: the queued job started only once the first had ended.
    let ended = cancelled["timings"]["finished_at_ms"].as_u64().unwrap();
    let started = done["timings"]["started_at_ms"].as_u64().unwrap();
    assert!(
        started >= ended,
        "started {started}, before the first ended at {ended}"
    );
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["type"], "https://wafer.dev/problems/timeout",
        "{done}"
    );
    assert_eq!(done["runner"]["kind"], "vm", "{done}");
    wait_no_qemu(name, Duration::from_secs(15), "its job's deadline");
}

#[test]
fn a_kill_9_of_the_server_mid_job_leaves_no_vm_and_the_job_runs_again() {
    let name = "wafer-test-kill";
    let mut s = vm_server(name, "");
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(
        &s,
        &key,
        json!({"function": "batch", "input": 6_000, "timeout_ms": 60_000}),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_qemu(name, Duration::from_secs(30));
    wafer_e2e::jobs::wait_status(&s, &key, &id, "running");
    s.kill();
    // The runner dies with the server and its VM with the runner.
    wait_no_qemu(name, Duration::from_secs(10), "a killed server");
    s.kill_and_restart();
    let done = get_job(&s, &key, &id, "120s");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["runner"]["kind"], "vm", "{done}");
    wait_no_qemu(name, Duration::from_secs(20), "its job");
}

/// A qemu named `name` that does nothing (paused, `-S`); it dies with the test.
fn paused_qemu(name: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("qemu-system-x86_64");
    cmd.args(["-name", name, "-M", "microvm"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("qemu starts")
}

#[test]
fn a_server_kills_the_vms_an_earlier_run_left_and_says_how_it_chose_tcg() {
    let name = "wafer-test-sweep";
    // A VM of this server's name from "an earlier run": paused (-S), it does nothing.
    let mut stray = paused_qemu(&format!("{name}:job_stray"));
    // Another name is not this server's: left alone.
    let mut other = paused_qemu("wafer-test-other:job_x");
    wait_for_qemu(name, Duration::from_secs(10));
    // And its scratch directory, with another server's beside it.
    let scratch = std::env::temp_dir().join(format!("{name}-vm-leftover"));
    let theirs = std::env::temp_dir().join("wafer-test-other-vm-leftover");
    for d in [&scratch, &theirs] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("agent.sock"), b"").unwrap();
    }
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"vm\"\n[jobs.long.vm]\nimage = \"{}\"\n\
         name = \"{name}\"\nkvm_device = \"/nonexistent/kvm\"\n",
        image().json.display()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = stray.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stray VM was left running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "another server's VM was killed"
    );
    let _ = other.kill();
    let _ = other.wait();
    // The server says so once it has killed them: the kill may be seen before the line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.log().contains("killed VMs left by an earlier run") {
        assert!(std::time::Instant::now() < deadline, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its scratch directories go next, at the same start.
    while scratch.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the earlier run's scratch directory is left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        theirs.exists(),
        "another server's scratch directory was removed"
    );
    std::fs::remove_dir_all(&theirs).unwrap();
    // No KVM device: emulation, and the metrics say why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s
        .metrics()
        .contains("wafer_vm_accel{accel=\"tcg\",probe=\"no-device\"} 1")
    {
        assert!(std::time::Instant::now() < deadline, "{}", s.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A long `stress` job with `input` on a server whose VMs boot the image `image_json`
/// (emulated, `extra` lines in `[jobs.long.vm]`): its record once it ended.
fn job_on_image(image_json: &std::path::Path, extra: &str, input: Value) -> Value {
    let s = TestServer::start_with_config(&format!(
        "[jobs.long]\nprovisioner = \"vm\"\n[jobs.long.vm]\nimage = \"{}\"\n\
         boot_timeout_ms = 30000\naccel = \"tcg\"\n{extra}",
        image_json.display()
    ));
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "sim", "stress", json!({"class": "long"}));
    let job = submit(&s, &key, json!({"function": "sim", "input": input}));
    get_job(&s, &key, job["id"].as_str().unwrap(), "90s")
}

#[test]
fn a_vm_whose_guest_never_boots_fails_its_job_with_the_reason() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.cpio.gz");
    std::fs::write(&broken, b"not an initramfs").unwrap();
    let json_path = dir.path().join("image.json");
    std::fs::write(
        &json_path,
        json!({"kernel": img.kernel, "initramfs": broken, "release": img.release}).to_string(),
    )
    .unwrap();
    let done = job_on_image(&json_path, "", json!({"force": 1, "section": 1}));
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["error"]["type"], "https://wafer.dev/problems/vm-failed",
        "{done}"
    );
    let detail = done["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("before its agent was ready"), "{detail}");
    assert!(detail.contains("Kernel panic"), "{detail}");
    assert!(qemu_left(broken.to_str().unwrap()).is_empty());
    // Configured to fall back: the job runs outside a VM, and its record says so and why.
    let done = job_on_image(
        &json_path,
        "fallback = \"local\"\n",
        json!({"force": 1000, "section": 10}),
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["runner"]["kind"], "local", "{done}");
    assert_eq!(done["runner"]["fallback_from"], "vm", "{done}");
    let reason = done["runner"]["reason"].as_str().unwrap();
    assert!(reason.contains("Kernel panic"), "{reason}");
    assert!(qemu_left(broken.to_str().unwrap()).is_empty());
}

#[test]
fn a_bad_provisioner_in_the_environment_or_a_bad_vm_name_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |config: Option<&str>, env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(wafer_e2e::wafer_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .stdin(std::process::Stdio::null());
        if let Some(c) = config {
            let path = dir.path().join("wafer.toml");
            std::fs::write(&path, c).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "it served");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(None, &[("WAFER_LONG_PROVISIONER", "vmm")]);
    assert!(
        err.contains(
            "WAFER_LONG_PROVISIONER is \"vmm\": it must be local, vm, command or kubernetes"
        ),
        "{err}"
    );
    let err = serve(
        Some("[jobs.long]\nprovisioner = \"vm\"\n[jobs.long.vm]\nname = \"a,b\"\n"),
        &[],
    );
    assert!(err.contains("jobs.long.vm.name \"a,b\" must be"), "{err}");
}

#[test]
fn a_guest_that_stops_answering_is_given_up_at_its_deadline_and_a_short_grace() {
    let name = "wafer-test-hang";
    // The guest agent says the job started, then never answers.
    let s = TestServer::start_with(
        &format!(
            "[jobs.long]\nprovisioner = \"vm\"\n[jobs.long.vm]\nimage = \"{}\"\naccel = \"tcg\"\n\
             name = \"{name}\"\n",
            image().json.display()
        ),
        &[("WAFER_CRASH_AT", "guest-hang")],
    );
    let key = s.tenant_key("acme");
    s.deploy_as(&key, "batch", "nap", json!({"class": "long"}));
    let job = submit(
        &s,
        &key,
        json!({"function": "batch", "input": 1, "timeout_ms": 2_000}),
    );
    let id = job["id"].as_str().unwrap();
    // Boot and compile under emulation take seconds; the run then has 2 s and 5 s of grace,
    // far inside this wait (the old bound was the timeout and two minutes).
    let done = get_job(&s, &key, id, "60s");
    assert_eq!(done["status"], "failed", "{done}");
    let detail = done["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("did not answer within the job's timeout"),
        "{done}"
    );
    wait_no_qemu(
        name,
        Duration::from_secs(15),
        "the guest that stopped answering",
    );
}
