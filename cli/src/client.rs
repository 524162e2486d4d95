//! The HTTP client of the CLI: finds the server and key, and turns problems into errors.

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// A failure the CLI reports with a specific exit code.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with a problem (exit 1).
    Problem {
        status: u16,
        title: String,
        detail: String,
    },
    /// The server could not be reached (exit 3).
    Connect(String),
    /// The command line was wrong (exit 2).
    Usage(String),
    /// Waiting ran out before the job ended (exit 4).
    Timeout(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Problem { .. } => 1,
            CliError::Usage(_) => 2,
            CliError::Connect(_) => 3,
            CliError::Timeout(_) => 4,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Problem {
                status,
                title,
                detail,
            } => write!(f, "{title} ({status}): {detail}"),
            CliError::Connect(s) => write!(f, "cannot reach the Wafer server: {s}"),
            CliError::Usage(s) | CliError::Timeout(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for CliError {}

/// A configured client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// A client for `url`; without a key, the admin key of `data_dir` is used when present.
    pub fn new(url: &str, key: Option<String>, data_dir: &Path) -> anyhow::Result<Self> {
        let key = match key {
            Some(k) => Some(k),
            None => std::fs::read_to_string(wafer_gateway::admin_key_path(data_dir))
                .ok()
                .map(|s| s.trim().to_owned()),
        };
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// A request to `path` (starting with `/`), authenticated when a key is known.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// Sends a request; a non-2xx answer becomes [`CliError::Problem`].
    pub async fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let resp = rb
            .send()
            .await
            .map_err(|e| CliError::Connect(format!("{} ({e})", self.base)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(problem_of(resp).await.into())
    }

    /// Sends a request and parses the JSON answer.
    pub async fn json(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(rb).await?;
        resp.json().await.context("the server's answer is not JSON")
    }
}

/// Reads a problem+json (or any error body) into a [`CliError::Problem`].
pub async fn problem_of(resp: Response) -> CliError {
    let status = resp.status().as_u16();
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("error")
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("title").is_some() => CliError::Problem {
            status,
            title: v["title"].as_str().unwrap_or(&reason).to_owned(),
            detail: v["detail"].as_str().unwrap_or("").to_owned(),
        },
        _ => CliError::Problem {
            status,
            title: reason,
            detail: text.chars().take(500).collect(),
        },
    }
}
