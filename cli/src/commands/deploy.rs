//! `wafer deploy NAME FILE.wasm`: upload the module, then create a new version.

use crate::client::{CliError, Client};
use crate::units;
use anyhow::Context;
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Flags of `wafer deploy`.
#[derive(clap::Args)]
pub struct Args {
    /// Function name ([a-z0-9][a-z0-9-]{0,62}).
    name: String,
    /// The compiled module (.wasm).
    file: PathBuf,
    /// Wall-clock timeout per invocation, e.g. 500ms, 5s, 2m.
    #[arg(long, value_parser = units::parse_duration_ms)]
    timeout: Option<u64>,
    /// Memory limit, e.g. 64MiB, 1GiB.
    #[arg(long, value_parser = units::parse_size_mb)]
    memory: Option<u64>,
    /// Fuel (CPU budget in wasm instructions) per invocation.
    #[arg(long)]
    fuel: Option<u64>,
    /// Environment variable the function sees (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Anyone may invoke it without an API key.
    #[arg(long)]
    public: bool,
    /// A command also gets the call's method and path in WAFER_METHOD and WAFER_PATH.
    #[arg(long)]
    request_env: bool,
    /// How long its runs are: `long` sends its jobs to dedicated runners, `short` keeps them
    /// off the long lane (default: decided by measured run times).
    #[arg(long, value_parser = ["short", "long"])]
    class: Option<String>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Uploads in chunks so a progress line can follow large modules.
fn progress_body(bytes: Bytes, show: bool) -> reqwest::Body {
    const CHUNK: usize = 256 * 1024;
    let total = bytes.len();
    let chunks: Vec<Bytes> = (0..total)
        .step_by(CHUNK)
        .map(|i| bytes.slice(i..(i + CHUNK).min(total)))
        .collect();
    let mut sent = 0usize;
    let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
        sent += c.len();
        if show {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\ruploading {:.1}/{:.1} MiB ({}%)",
                sent as f64 / 1048576.0,
                total as f64 / 1048576.0,
                sent * 100 / total.max(1)
            );
            if sent == total {
                let _ = writeln!(err);
            }
        }
        Ok::<_, std::io::Error>(c)
    }));
    reqwest::Body::wrap_stream(stream)
}

/// Runs the command.
pub async fn run(client: &Client, a: &Args) -> anyhow::Result<()> {
    let mut env = Map::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--env takes K=V, got {kv:?}")))?;
        env.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let bytes = Bytes::from(
        tokio::fs::read(&a.file)
            .await
            .with_context(|| format!("reading {}", a.file.display()))?,
    );
    let show = bytes.len() >= (1 << 20) && std::io::stderr().is_terminal();
    let len = bytes.len();
    let module = client
        .json(
            client
                .request(Method::PUT, "/v1/modules")
                .header("content-type", "application/wasm")
                .header("content-length", len)
                .body(progress_body(bytes, show)),
        )
        .await?;
    let digest = module["digest"].as_str().unwrap_or_default().to_owned();
    let mut spec = json!({ "module": digest, "env": env, "public": a.public });
    if a.request_env {
        spec["request_env"] = Value::Bool(true);
    }
    if let Some(c) = &a.class {
        spec["class"] = Value::String(c.clone());
    }
    if let Some(t) = a.timeout {
        spec["timeout_ms"] = t.into();
    }
    if let Some(m) = a.memory {
        spec["memory_mb"] = m.into();
    }
    if let Some(f) = a.fuel {
        spec["fuel"] = f.into();
    }
    let version = client
        .json(
            client
                .request(Method::PUT, &format!("/v1/functions/{}", a.name))
                .json(&spec),
        )
        .await?;
    if a.json {
        println!("{}", json!({ "module": module, "version": version }));
    } else {
        println!(
            "deployed {} version {} ({} module {}, {} bytes)",
            a.name,
            version["version"],
            module["abi"].as_str().unwrap_or("?"),
            digest,
            module["size"]
        );
    }
    Ok(())
}
