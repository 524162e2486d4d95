//! How a server's jobs' VMs are made (`[jobs.long.vm]`): the image, memory, CPUs, the
//! acceleration and what a job does when its VM cannot boot.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How VMs are accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe guest boots under it in time, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation, `-accel kvm -cpu host`.
    Kvm,
    /// Emulation, `-accel tcg -cpu max`: slow, but works everywhere.
    Tcg,
}

impl Accel {
    /// Its name, as in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What a job does when its VM cannot boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// It fails with the reason (503 `vm-failed`).
    #[default]
    None,
    /// It runs in the runner's own process, as with the `local` provisioner; the job's
    /// record says so, with the reason.
    Local,
}

/// How jobs' VMs are made (`[jobs.long.vm]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmOptions {
    /// The image's `image.json` (from `scripts/vm-image.py`): kernel and initramfs paths.
    pub image: PathBuf,
    /// MiB of VM memory beyond the job's memory limit (kernel, agent, compiler).
    pub memory_overhead_mb: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Time the guest agent has to say ready, ms.
    pub boot_timeout_ms: u64,
    /// The qemu program.
    pub qemu: String,
    /// `auto` (KVM if a probe guest boots under it, else TCG), `kvm` or `tcg`.
    pub accel: Accel,
    /// The KVM device `auto` looks for.
    pub kvm_device: PathBuf,
    /// Time the probe guest has to say ready under KVM, ms.
    pub probe_timeout_ms: u64,
    /// `none` (a VM that cannot boot fails its job) or `local` (the job then runs outside
    /// a VM, recorded on the job).
    pub fallback: Fallback,
    /// The qemu `-name` of this server's VMs (letters, digits, `.`, `_`, `-`); empty: `wafer-`
    /// and a hash of the data directory. VMs of this name left by an earlier run are killed
    /// when the server starts.
    pub name: String,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            image: PathBuf::from("vm/image.json"),
            memory_overhead_mb: 256,
            vcpus: 1,
            boot_timeout_ms: 60_000,
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Auto,
            kvm_device: PathBuf::from("/dev/kvm"),
            probe_timeout_ms: 8_000,
            fallback: Fallback::None,
            name: String::new(),
        }
    }
}

impl VmOptions {
    /// These options as a server with data directory `data_dir` hands them to its runners:
    /// the image's path made absolute, the VMs' name set and checked.
    pub fn for_server(&self, data_dir: &Path) -> Result<VmOptions> {
        let mut vm = self.clone();
        if vm.image.is_relative() {
            vm.image = data_dir.join(&vm.image);
        }
        if vm.name.is_empty() {
            let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
            let hash = <sha2::Sha256 as sha2::Digest>::digest(dir.as_os_str().as_encoded_bytes());
            vm.name = format!("wafer-{}", &hex::encode(hash)[..16]);
        }
        if vm.name.len() > 64
            || !vm
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!(
                "jobs.long.vm.name {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                vm.name
            );
        }
        Ok(vm)
    }
}
