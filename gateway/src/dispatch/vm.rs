//! The `vm` provisioner: a dedicated runner that runs its one job in a microVM of its own.
//! The runner is a local `wafer worker` child (as with [`LocalProvisioner`]) given the VM
//! options in `WAFER_VM`; it boots the VM, hands the job to the guest agent and speaks for it
//! to the server ([`wafer_worker::vm`]).
//!
//! KVM or emulation is chosen once, by a probe guest booted when the provisioner is made;
//! launches wait for that choice, so long jobs stay queued while it is made.

use crate::dispatch::provision::{
    LaunchRequest, LocalProvisioner, ProvisionError, Provisioner, RunnerHandle,
};
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::sync::watch;
use wafer_worker::vm::{self, VmOptions};

/// Dedicated runners in microVMs.
pub struct VmProvisioner {
    local: LocalProvisioner,
    /// The options runners get (JSON), with the acceleration chosen: None until the probe
    /// is done.
    options: watch::Receiver<Option<String>>,
}

impl VmProvisioner {
    /// A provisioner of VMs with `opts` (for this server: see [`VmOptions::for_server`]).
    /// VMs of its name that an earlier run left are killed now; the probe that chooses the
    /// acceleration starts in the background and is recorded in `metrics`.
    pub fn new(mut opts: VmOptions, metrics: Arc<Metrics>) -> Self {
        let swept = vm::sweep(&opts.name);
        if swept > 0 {
            tracing::warn!(vms = swept, name = %opts.name, "killed VMs left by an earlier run");
        }
        let removed = vm::sweep_scratch(&opts.name);
        if removed > 0 {
            tracing::warn!(dirs = removed, name = %opts.name, "removed VM scratch directories left by an earlier run");
        }
        let (chosen, options) = watch::channel(None);
        tokio::spawn(async move {
            let choice = vm::choose_accel(&opts).await;
            tracing::info!(
                accel = choice.accel.as_str(),
                probe = choice.probe,
                detail = %choice.detail,
                "VM acceleration chosen"
            );
            metrics.set_vm_accel(choice.accel.as_str(), choice.probe);
            opts.accel = choice.accel;
            let json = serde_json::to_string(&opts).expect("vm options serialize");
            let _ = chosen.send(Some(json));
        });
        Self {
            local: LocalProvisioner::default(),
            options,
        }
    }
}

#[async_trait::async_trait]
impl Provisioner for VmProvisioner {
    fn kind(&self) -> &'static str {
        "vm"
    }

    async fn launch(&self, req: &LaunchRequest) -> Result<RunnerHandle, ProvisionError> {
        let mut options = self.options.clone();
        let chosen = options
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ProvisionError("the VM acceleration probe ended without a choice".into()))?
            .clone()
            .unwrap_or_default();
        let mut req = req.clone();
        req.env.push(("WAFER_VM".into(), chosen));
        self.local.launch(&req).await
    }

    async fn teardown(&self, handle: &RunnerHandle) -> Result<(), ProvisionError> {
        self.local.teardown(handle).await
    }

    async fn alive(&self, handle: &RunnerHandle) -> Option<bool> {
        self.local.alive(handle).await
    }
}
