//! microVMs for the `vm` provisioner's tests: the guest image built by `scripts/vm-image.py`
//! (Debian's kernel, the `wafer` binary under test as `/init`), booted with
//! `qemu-system-x86_64 -M microvm` under TCG, and the agent's virtio-serial port as a Unix
//! socket the test speaks JSON lines on.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What to boot: paths from the image's `image.json`.
pub struct Image {
    /// The uncompressed kernel.
    pub kernel: PathBuf,
    /// The initramfs with the agent.
    pub initramfs: PathBuf,
    /// The kernel release the guest should report.
    pub release: String,
    /// The `image.json` naming them (what `[jobs.long.vm] image` takes).
    pub json: PathBuf,
}

/// The guest image for the `wafer` binary under test, built (or found cached) in the target
/// directory.
pub fn image() -> Image {
    let bin = crate::wafer_bin();
    let out = bin
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("vm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vm-image.py");
    let made = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg(&bin)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/vm-image.py");
    assert!(made.status.success(), "scripts/vm-image.py failed");
    let v: Value = serde_json::from_slice(&made.stdout).expect("image.json");
    Image {
        kernel: v["kernel"].as_str().expect("kernel").into(),
        initramfs: v["initramfs"].as_str().expect("initramfs").into(),
        release: v["release"].as_str().expect("release").into(),
        json: out.join("image.json"),
    }
}

/// A booted microVM; killed when dropped.
pub struct Vm {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    /// When qemu was started.
    pub started: Instant,
}

impl Vm {
    /// Boots `kernel` with `initramfs` (TCG, one vCPU, 512 MiB) and the agent's port.
    pub fn boot(kernel: &Path, initramfs: &Path) -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        // The command line is the provisioner's own, from the binary under test. The suite's
        // last check looks for qemu named `wafer-…` left running.
        let printed = Command::new(crate::wafer_bin())
            .arg("__vm-command")
            .arg("--kernel")
            .arg(kernel)
            .arg("--initramfs")
            .arg(initramfs)
            .arg("--socket")
            .arg(&socket)
            .args(["--memory-mb", "512", "--name", "wafer-test:direct"])
            .output()
            .expect("run wafer __vm-command");
        assert!(printed.status.success(), "wafer __vm-command failed");
        let args: Vec<String> = serde_json::from_slice(&printed.stdout).expect("a JSON array");
        let console = std::fs::File::create(dir.path().join("console.log")).expect("console.log");
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(Stdio::null());
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // The VM dies with the test, even if the test is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect(
            "start qemu-system-x86_64 (apt-get install qemu-system-x86; scripts/test.sh does)",
        );
        Vm {
            child,
            socket,
            _dir: dir,
            started: Instant::now(),
        }
    }

    /// The qemu process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the guest printed on its serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("console.log")).unwrap_or_default()
    }

    /// Connects to the agent's port (the socket appears once qemu runs).
    pub fn connect(&self, within: Duration) -> Agent {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                return Agent {
                    reader: BufReader::new(s.try_clone().expect("clone")),
                    writer: s,
                };
            }
            assert!(
                Instant::now() < deadline,
                "qemu never opened the agent's socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for qemu to exit, at most `within`.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host side of the agent's port.
pub struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Agent {
    /// The next JSON line from the guest, or `None` at `within` (or when the port closes).
    pub fn read(&mut self, within: Duration) -> Option<Value> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(within))
            .expect("timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON line from the agent")),
        }
    }

    /// Sends one request line.
    pub fn send(&mut self, request: &Value) {
        writeln!(self.writer, "{request}").expect("write to the agent");
    }
}
