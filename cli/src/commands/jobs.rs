//! `wafer jobs …`: list, inspect, wait for, cancel and read the results of asynchronous jobs.

use crate::client::{CliError, Client, problem_of};
use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// `wafer jobs …`.
#[derive(clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    Ls {
        /// Only jobs of this function.
        #[arg(long)]
        function: Option<String>,
        /// Only jobs in this status (queued, running, succeeded, failed, cancelled, dead).
        #[arg(long)]
        status: Option<String>,
        /// How many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a job: status, attempts, route, timings, error.
    Get {
        /// The job id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a job to end, showing its status; exits 0 when it succeeded, 1 otherwise.
    Wait {
        /// The job id.
        id: String,
        /// Give up after this long (e.g. 30s, 10m); exit 4 then.
        #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration_ms)]
        timeout: u64,
        /// Print the job as JSON at the end.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Print what a job returned (its body) on stdout.
    Result {
        /// The job id.
        id: String,
        /// Wait this long for it to end first (e.g. 30s).
        #[arg(long, value_parser = crate::units::parse_duration_ms)]
        wait: Option<u64>,
    },
    /// Print what a job wrote to stderr.
    Logs {
        /// The job id.
        id: String,
    },
}

/// Runs a `wafer jobs` command.
pub async fn run(client: &Client, cmd: &JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Ls {
            function,
            status,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(f) = function {
                query.push(("function", f.clone()));
            }
            if let Some(s) = status {
                query.push(("status", s.clone()));
            }
            let v = client
                .json(client.request(Method::GET, "/v1/jobs").query(&query))
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<37} {:<20} {:>4} {:<10} {:>8} {:>9}",
                "ID", "FUNCTION", "VER", "STATUS", "ATTEMPTS", "RUN"
            );
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<37} {:<20} {:>4} {:<10} {:>8} {:>9}",
                    j["id"].as_str().unwrap_or(""),
                    j["function"].as_str().unwrap_or(""),
                    j["version"],
                    j["status"].as_str().unwrap_or(""),
                    j["attempts"],
                    ms(&j["timings"]["run_ms"]),
                );
            }
            Ok(())
        }
        JobsCommand::Get { id, json } => {
            let v = get(client, id, None).await?;
            print_job(&v, *json)
        }
        JobsCommand::Wait { id, timeout, json } => wait(client, id, *timeout, *json).await,
        JobsCommand::Cancel { id } => {
            let v = client
                .json(client.request(Method::DELETE, &job_path(id)?))
                .await?;
            eprintln!("cancelled {}", v["id"].as_str().unwrap_or(id));
            Ok(())
        }
        JobsCommand::Result { id, wait } => {
            let mut rb = client.request(Method::GET, &format!("{}/result", job_path(id)?));
            if let Some(w) = wait {
                rb = rb.query(&[("wait", format!("{w}ms"))]);
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| CliError::Connect(e.to_string()))?;
            let ended_ok = resp
                .headers()
                .get("x-wafer-job-status")
                .is_some_and(|v| v == "succeeded");
            if !ended_ok {
                return Err(problem_of(resp).await.into());
            }
            let bytes = resp.bytes().await.context("reading the result")?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(())
        }
        JobsCommand::Logs { id } => {
            let resp = client
                .send(client.request(Method::GET, &format!("{}/logs", job_path(id)?)))
                .await?;
            print!("{}", resp.text().await.context("reading the logs")?);
            Ok(())
        }
    }
}

fn job_path(id: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Err(CliError::Usage(format!("{id:?} is not a job id (job_…)")).into());
    }
    Ok(format!("/v1/jobs/{id}"))
}

fn ms(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) if ms >= 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms}ms"),
        None => "-".into(),
    }
}

async fn get(client: &Client, id: &str, wait_ms: Option<u64>) -> anyhow::Result<Value> {
    let mut rb = client.request(Method::GET, &job_path(id)?);
    if let Some(w) = wait_ms {
        rb = rb.query(&[("wait", format!("{w}ms"))]);
    }
    client.json(rb).await
}

fn print_job(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let t = &v["timings"];
    println!("id:        {}", v["id"].as_str().unwrap_or(""));
    println!(
        "function:  {}@{}",
        v["function"].as_str().unwrap_or(""),
        v["version"]
    );
    println!("status:    {}", v["status"].as_str().unwrap_or(""));
    println!("attempts:  {}", v["attempts"]);
    println!(
        "route:     {} ({} lane): {}",
        v["route"].as_str().unwrap_or(""),
        v["lane"].as_str().unwrap_or(""),
        v["route_reason"].as_str().unwrap_or("")
    );
    println!(
        "timings:   waited {}, ran {}",
        ms(&t["wait_ms"]),
        ms(&t["run_ms"])
    );
    if let Some(r) = v["result"].as_object() {
        println!(
            "result:    {} {} ({} bytes): wafer jobs result {}",
            r["status"],
            r["content_type"].as_str().unwrap_or(""),
            r["bytes"],
            v["id"].as_str().unwrap_or("")
        );
    }
    if let Some(e) = v["error"].as_object() {
        println!(
            "error:     {}: {}",
            e["title"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Follows the job's event stream until it ends, with a spinner and the elapsed time on a
/// terminal and a line per status change otherwise; reconnects if the stream breaks.
async fn wait(client: &Client, id: &str, timeout_ms: u64, json: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut frame = 0usize;
    let mut last: Option<Value> = None;
    let mut shown_status = String::new();
    'connect: loop {
        let resp = client
            .send(client.request(Method::GET, &format!("{}/events", job_path(id)?)))
            .await?;
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                chunk = body.next() => {
                    let Some(chunk) = chunk else { continue 'connect };
                    let Ok(chunk) = chunk else { continue 'connect };
                    buf.extend_from_slice(&chunk);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let line = String::from_utf8_lossy(&line);
                        let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else { continue };
                        let status = v["status"].as_str().unwrap_or("").to_owned();
                        if status != shown_status && !tty {
                            eprintln!("{id} {status} after {:.1}s", started.elapsed().as_secs_f64());
                        }
                        shown_status = status;
                        last = Some(v);
                    }
                    if !matches!(shown_status.as_str(), "" | "queued" | "running") {
                        break 'connect;
                    }
                }
                _ = tick.tick(), if tty => {
                    frame += 1;
                    eprint!(
                        "\r\x1b[2K{} {} {} {:.1}s",
                        SPINNER[frame % SPINNER.len()],
                        id,
                        if shown_status.is_empty() { "…" } else { shown_status.as_str() },
                        started.elapsed().as_secs_f64()
                    );
                }
                _ = tokio::time::sleep_until(deadline) => break 'connect,
            }
        }
    }
    let ended = !matches!(shown_status.as_str(), "" | "queued" | "running");
    if tty {
        eprintln!(
            "\r\x1b[2K{} {} after {:.1}s",
            id,
            shown_status,
            started.elapsed().as_secs_f64()
        );
    }
    let v = match last {
        Some(v) => v,
        None => get(client, id, None).await?,
    };
    print_job(&v, json)?;
    if !ended {
        return Err(CliError::Timeout(format!(
            "the job is still {shown_status} after {:.0}s",
            started.elapsed().as_secs_f64()
        ))
        .into());
    }
    if shown_status != "succeeded" {
        return Err(CliError::Problem {
            status: v["error"]["status"].as_u64().unwrap_or(0) as u16,
            title: format!("job {shown_status}"),
            detail: v["error"]["detail"].as_str().unwrap_or("").to_owned(),
        }
        .into());
    }
    Ok(())
}
