//! `ls`, `versions`, `rollback`, `rm` and `keys`: managing functions and keys.

use crate::client::{CliError, Client};
use reqwest::Method;
use serde_json::{Value, json};

/// Flags of `wafer ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `wafer versions`.
#[derive(clap::Args)]
pub struct VersionsArgs {
    /// Function name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `wafer logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Function name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `wafer rollback`.
#[derive(clap::Args)]
pub struct RollbackArgs {
    /// Function name.
    name: String,
    /// The version `latest` should point to.
    version: u32,
}

/// Flags of `wafer rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Function name.
    name: String,
}

/// `wafer keys …`.
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant (admin only); the key is printed once.
    Create {
        /// Tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// Scopes: deploy, invoke, read, metrics, admin (repeatable; default
        /// deploy+invoke+read).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every API key (admin only): id, tenant, scopes; never the secret.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by its id (admin only); it stops working at once.
    Revoke {
        /// The key's id, as `wafer keys ls` shows it.
        id: String,
    },
}

/// Lists functions.
pub async fn ls(client: &Client, a: &LsArgs) -> anyhow::Result<()> {
    let v = client
        .json(client.request(Method::GET, "/v1/functions"))
        .await?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let empty = Vec::new();
    let list = v["functions"].as_array().unwrap_or(&empty);
    println!("{:<32} {:>7}  ALIASES", "NAME", "LATEST");
    for f in list {
        let aliases = f["aliases"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<32} {:>7}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["latest_version"].to_string(),
            aliases
        );
    }
    Ok(())
}

/// Lists versions of a function.
pub async fn versions(client: &Client, a: &VersionsArgs) -> anyhow::Result<()> {
    let v = client
        .json(client.request(Method::GET, &format!("/v1/functions/{}/versions", a.name)))
        .await?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let empty = Vec::new();
    println!(
        "{:>7}  {:<8} {:>9} {:>7} {:>14}  MODULE",
        "VERSION", "ABI", "TIMEOUT", "MEMORY", "FUEL"
    );
    for ver in v["versions"].as_array().unwrap_or(&empty) {
        println!(
            "{:>7}  {:<8} {:>7}ms {:>5}MiB {:>14}  {}",
            ver["version"].to_string(),
            ver["abi"].as_str().unwrap_or("?"),
            ver["timeout_ms"].to_string(),
            ver["memory_mb"].to_string(),
            ver["fuel"].to_string(),
            ver["module"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Shows the recent invocation logs of a function, oldest first.
pub async fn logs(client: &Client, a: &LogsArgs) -> anyhow::Result<()> {
    let v = client
        .json(client.request(Method::GET, &format!("/v1/functions/{}/logs", a.name)))
        .await?;
    if a.json {
        println!("{v}");
        return Ok(());
    }
    let empty = Vec::new();
    for e in v["logs"].as_array().unwrap_or(&empty) {
        println!(
            "--- {} v{} {} {} {:.1}ms",
            e["time"],
            e["version"],
            e["request_id"].as_str().unwrap_or(""),
            e["outcome"].as_str().unwrap_or(""),
            e["duration_ms"].as_f64().unwrap_or(0.0)
        );
        let log = e["log"].as_str().unwrap_or("");
        if !log.is_empty() {
            println!("{}", log.trim_end());
        }
    }
    Ok(())
}

/// Moves `latest` to an earlier version.
pub async fn rollback(client: &Client, a: &RollbackArgs) -> anyhow::Result<()> {
    client
        .json(
            client
                .request(
                    Method::PUT,
                    &format!("/v1/functions/{}/aliases/latest", a.name),
                )
                .json(&json!({ "version": a.version })),
        )
        .await?;
    println!("{} latest -> version {}", a.name, a.version);
    Ok(())
}

/// Deletes a function.
pub async fn rm(client: &Client, a: &RmArgs) -> anyhow::Result<()> {
    client
        .send(client.request(Method::DELETE, &format!("/v1/functions/{}", a.name)))
        .await?;
    println!("deleted {}", a.name);
    Ok(())
}

/// Key management.
pub async fn keys(client: &Client, k: &KeysCommand) -> anyhow::Result<()> {
    match k {
        KeysCommand::Create {
            tenant,
            scopes,
            json,
        } => {
            let scopes: Vec<Value> = if scopes.is_empty() {
                vec!["deploy".into(), "invoke".into(), "read".into()]
            } else {
                for s in scopes {
                    if !matches!(
                        s.as_str(),
                        "deploy" | "invoke" | "read" | "metrics" | "admin"
                    ) {
                        return Err(CliError::Usage(format!("unknown scope {s:?}")).into());
                    }
                }
                scopes.iter().map(|s| Value::String(s.clone())).collect()
            };
            let v = client
                .json(
                    client
                        .request(Method::POST, "/v1/keys")
                        .json(&json!({ "tenant": tenant, "scopes": scopes })),
                )
                .await?;
            if *json {
                println!("{v}");
            } else {
                println!("{}", v["key"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        KeysCommand::Ls { json } => {
            let v = client.json(client.request(Method::GET, "/v1/keys")).await?;
            if *json {
                println!("{v}");
                return Ok(());
            }
            let empty = Vec::new();
            println!("{:<18} {:<24} {:>10}  SCOPES", "ID", "TENANT", "CREATED");
            for k in v["keys"].as_array().unwrap_or(&empty) {
                let scopes: Vec<&str> = k["scopes"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<18} {:<24} {:>10}  {}",
                    k["id"].as_str().unwrap_or("?"),
                    k["tenant"].as_str().unwrap_or("?"),
                    k["created"].to_string(),
                    scopes.join(",")
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            client
                .send(client.request(Method::DELETE, &format!("/v1/keys/{id}")))
                .await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}

/// Flags of `wafer status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Shows runner processes alive and jobs per lane.
pub async fn status(client: &Client, a: &StatusArgs) -> anyhow::Result<()> {
    let v = client
        .json(client.request(Method::GET, "/v1/admin/status"))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r = &v["runners"];
    println!(
        "workers:    {} alive (at most {})",
        r["workers"], r["max_workers"]
    );
    println!("dedicated:  {} alive", r["dedicated"]);
    for lane in ["fast", "default", "long"] {
        println!(
            "{:<11} {} jobs waiting or running",
            format!("{lane}:"),
            v["queues"][lane]
        );
    }
    Ok(())
}
