//! The guest side of the `vm` provisioner, for real: Debian's kernel boots in a qemu microVM
//! under TCG with the `wafer` binary under test as `/init`, and the guest agent answers on its
//! virtio-serial port. (Routing jobs to such VMs is the provisioner's next step.)

use serde_json::json;
use std::time::Duration;
use wafer_e2e::vm::{Vm, image};

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
    let pid = vm.pid();
    drop(agent);
    // The VM ends by itself (panic=-1 with -no-reboot), or is killed: either way, it is gone.
    let _ = vm.wait(Duration::from_secs(10));
    let console = vm.console();
    assert!(console.contains("Kernel panic"), "console:\n{console}");
    drop(vm);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "qemu {pid} outlived its test"
    );
}
