//! `wafer invoke NAME`: call a function and print its response body.

use crate::client::{CliError, Client, problem_of};
use anyhow::Context;
use reqwest::Method;
use std::io::{Read, Write};

/// Flags of `wafer invoke`.
#[derive(clap::Args)]
pub struct Args {
    /// Function name, optionally `@version` or `@alias`.
    name: String,
    /// Request body: `@file`, `-` for stdin, or the text itself.
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// Request header `K:V` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    headers: Vec<String>,
    /// HTTP method (default POST with data, GET without).
    #[arg(long, short = 'X')]
    method: Option<String>,
    /// Path below the function, e.g. /users/1?x=2.
    #[arg(long, default_value = "/")]
    path: String,
    /// Run it as a job: print the job's id at once (`wafer jobs wait ID` follows it).
    #[arg(long = "async")]
    run_async: bool,
    /// With --async: a key that makes a retried submission return the same job.
    #[arg(long, requires = "run_async")]
    idempotency_key: Option<String>,
}

fn body_of(data: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match data.as_deref() {
        None => None,
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            Some(buf)
        }
        Some(s) if s.starts_with('@') => {
            Some(std::fs::read(&s[1..]).with_context(|| format!("reading {}", &s[1..]))?)
        }
        Some(s) => Some(s.as_bytes().to_vec()),
    })
}

/// Runs the command: the body goes to stdout; a failure exits 1 with the problem on stderr.
pub async fn run(client: &Client, a: &Args) -> anyhow::Result<()> {
    let body = body_of(&a.data)?;
    let method = match &a.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| CliError::Usage(format!("invalid method {m:?}")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let path = if a.path.starts_with('/') {
        a.path.clone()
    } else {
        format!("/{}", a.path)
    };
    let mut rb = client.request(method, &format!("/fn/{}{}", a.name, path));
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::Usage(format!("--header takes K:V, got {h:?}")))?;
        rb = rb.header(k.trim(), v.trim());
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    if a.run_async {
        rb = rb.header("prefer", "respond-async");
        if let Some(k) = &a.idempotency_key {
            rb = rb.header("idempotency-key", k);
        }
        let v = client.json(rb).await?;
        let id = v["id"].as_str().unwrap_or_default();
        println!("{id}");
        eprintln!("queued; follow it with: wafer jobs wait {id}");
        return Ok(());
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| CliError::Connect(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(problem_of(resp).await.into());
    }
    let bytes = resp.bytes().await.context("reading the response")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}
