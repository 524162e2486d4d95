//! How a runner runs a job it has started: here, in its own engine ([`Here`]), or in a
//! microVM of the job's own ([`crate::vm::InVm`], the `vm` provisioner's runners).

use crate::client::ServerClient;
use crate::end::end_of;
use crate::order::{WorkOrder, execute_order};
use bytes::Bytes;
use wafer_core::{ArtifactKey, JobEnd};
use wafer_runner::Runner;

/// Runs a started job's order on its input, giving the job's end and output.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Runs `order` on `input`; `server` (with the claim's credential) gives the module or
    /// its compiled code, `runner` is this process's engine.
    async fn execute(
        &self,
        server: &ServerClient,
        runner: &Runner,
        order: &WorkOrder,
        input: Bytes,
    ) -> anyhow::Result<(JobEnd, Bytes)>;
}

/// In this process's own engine.
pub struct Here;

#[async_trait::async_trait]
impl Executor for Here {
    async fn execute(
        &self,
        server: &ServerClient,
        runner: &Runner,
        order: &WorkOrder,
        input: Bytes,
    ) -> anyhow::Result<(JobEnd, Bytes)> {
        fetch_code(server, runner, &order.module).await?;
        let result = execute_order(runner, order, input).await;
        Ok(end_of(result.map(|(o, _)| o)))
    }
}

/// Makes sure the runner's artifact store has `digest`'s compiled code (fetched from the
/// server for an engine like its own) or at least the module (to compile here), for runners
/// that do not share the server's artifact directory.
pub async fn fetch_code(
    server: &ServerClient,
    runner: &Runner,
    digest: &wafer_core::Digest,
) -> anyhow::Result<()> {
    let store = runner.artifacts();
    let compiled = ArtifactKey::compiled(runner.fingerprint(), digest)?;
    if store.exists(&compiled).await? {
        return Ok(());
    }
    if let Some(code) = server.compiled(runner.fingerprint(), digest).await? {
        store.put(&compiled, code).await?;
        return Ok(());
    }
    let module = ArtifactKey::Module(digest.clone());
    if !store.exists(&module).await? {
        let bytes = server
            .module(digest)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server has no module {digest}"))?;
        store.put(&module, bytes).await?;
    }
    Ok(())
}
