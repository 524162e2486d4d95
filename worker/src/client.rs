//! A runner's side of the runners' API: [`ServerClient`] sends the [`crate::wire`] requests
//! with a runner credential, and [`Deliveries`] is where a runner gets jobs: the server's
//! queue through that API ([`RemoteQueue`]) or Redis directly ([`DirectQueue`]).

use crate::wire::{
    AckRequest, ClaimRequest, Endpoint, HeartbeatRequest, RunnerSetup, SETUP_ROUTE, job_path,
};
use anyhow::Context;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use wafer_core::{Claim, Claimed, JobId, Lane, Secret};

/// The server's internal API, as a runner calls it.
pub struct ServerClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl ServerClient {
    /// A client of the server at `base`.
    pub fn new(base: &str, token: Secret) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .context("building the HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client of the same server that presents `token` (a claim's credential).
    pub fn scoped(&self, token: Secret) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
        }
    }

    async fn send<R: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<R> {
        let resp = rb
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| format!("reaching the server at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!(
                "the server answered {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        resp.json().await.context("the server's answer is not JSON")
    }

    /// The server's runner setup.
    pub async fn setup(&self) -> anyhow::Result<RunnerSetup> {
        self.send(self.http.get(format!("{}{SETUP_ROUTE}", self.base)))
            .await
    }

    /// Sends `req` (a request whose route names no job).
    pub async fn call<E: Endpoint>(&self, req: &E) -> anyhow::Result<E::Answer> {
        self.send(
            self.http
                .post(format!("{}{}", self.base, E::ROUTE))
                .json(req),
        )
        .await
    }

    /// Sends `req` about job `id`.
    pub async fn call_job<E: Endpoint>(&self, id: &JobId, req: &E) -> anyhow::Result<E::Answer> {
        let path = job_path(E::ROUTE, id);
        self.send(self.http.post(format!("{}{path}", self.base)).json(req))
            .await
    }

    /// GETs the bytes at `path` of the internal API; None on 404.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Option<Bytes>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| format!("reaching the server at {}", self.base))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.bytes().await?)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => anyhow::bail!("the server answered {s} for {path}"),
        }
    }

    /// A module's bytes; None when the server has none (or the credential does not reach it).
    pub async fn module(&self, digest: &wafer_core::Digest) -> anyhow::Result<Option<Bytes>> {
        self.get_bytes(&crate::wire::MODULE_ROUTE.replace("{digest}", digest.as_str()))
            .await
    }

    /// A module's code compiled for the engine of `fingerprint`; None when the server has none
    /// for that engine.
    pub async fn compiled(
        &self,
        fingerprint: &str,
        digest: &wafer_core::Digest,
    ) -> anyhow::Result<Option<Bytes>> {
        let path = crate::wire::COMPILED_ROUTE
            .replace("{fingerprint}", fingerprint)
            .replace("{digest}", digest.as_str());
        self.get_bytes(&path).await
    }
}

/// Where a runner gets deliveries: claim, heartbeat, ack. The server's queue through its
/// internal API ([`RemoteQueue`]), where `server` presents the credential each call needs; a
/// queue a runner reaches directly (Redis Streams) fits the same.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync + 'static {
    /// The next job of `lane`, waiting up to `wait` for one, with the claim's credential when
    /// the server made the claim (else the start asks the server for it).
    async fn claim(
        &self,
        server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>>;
    /// Extends the lease; false when it was lost (cancelled or delivered again).
    async fn heartbeat(
        &self,
        server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool>;
    /// Removes the delivery after the end is stored.
    async fn ack(&self, server: &ServerClient, claim: &Claim) -> anyhow::Result<bool>;
}

/// The server's queue (whatever its backend), through its internal API.
pub struct RemoteQueue;

#[async_trait::async_trait]
impl Deliveries for RemoteQueue {
    async fn claim(
        &self,
        server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>> {
        let a = server
            .call(&ClaimRequest {
                lane,
                lease_ms: lease.as_millis() as u64,
                wait_ms: wait.as_millis() as u64,
            })
            .await?;
        Ok(a.claimed.map(|c| (c, a.credential.map(Secret::new))))
    }

    async fn heartbeat(
        &self,
        server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool> {
        let a = server
            .call(&HeartbeatRequest {
                claim: claim.clone(),
                lease_ms: lease.as_millis() as u64,
            })
            .await?;
        Ok(a.held)
    }

    async fn ack(&self, server: &ServerClient, claim: &Claim) -> anyhow::Result<bool> {
        Ok(server.call(&AckRequest(claim.clone())).await?.acked)
    }
}

/// A queue a runner reaches directly (Redis Streams).
pub struct DirectQueue(pub Arc<dyn wafer_core::JobQueue>);

#[async_trait::async_trait]
impl Deliveries for DirectQueue {
    async fn claim(
        &self,
        _server: &ServerClient,
        lane: Lane,
        lease: Duration,
        wait: Duration,
    ) -> anyhow::Result<Option<(Claimed, Option<Secret>)>> {
        Ok(self
            .0
            .claim_wait(lane, lease, wait)
            .await?
            .map(|c| (c, None)))
    }

    async fn heartbeat(
        &self,
        _server: &ServerClient,
        claim: &Claim,
        lease: Duration,
    ) -> anyhow::Result<bool> {
        Ok(self.0.heartbeat(claim, lease).await?)
    }

    async fn ack(&self, _server: &ServerClient, claim: &Claim) -> anyhow::Result<bool> {
        Ok(self.0.ack(claim).await?)
    }
}
