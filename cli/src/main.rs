//! `wafer`: one binary for every role and the client commands. It holds entry points only:
//! what each command does lives in the library crates.
//!
//! Layout:
//! - `main.rs`: argument parsing, and the entry points that must run before a tokio runtime
//!   exists (the compile worker, the VM guest agent as `/init`).
//! - `commands/`: one module per command: `serve` and `worker` wire the gateway and the worker
//!   crate from configuration; `cache` runs the response cache as a proxy; the rest
//!   (`deploy`, `invoke`, `jobs`, `manage`) are thin HTTP clients.
//! - `client.rs`: the HTTP client of those commands and its exit codes; `units.rs`: sizes and
//!   durations on the command line.

mod client;
mod commands;
mod units;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// Every invocation allocates many small host objects (stores, resource tables, headers);
// mimalloc's thread-local free lists serve them faster than glibc malloc (measured with
// scripts/bench.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Wafer: run WebAssembly functions over HTTP, sandboxed.
#[derive(Parser)]
#[command(name = "wafer", version, about)]
struct Cli {
    /// Gateway URL for client commands.
    #[arg(
        long,
        global = true,
        env = "WAFER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key for client commands (default: the admin key in the data directory).
    #[arg(long, global = true, env = "WAFER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Data directory (where `serve` keeps state and the admin key).
    #[arg(long, global = true, env = "WAFER_DATA_DIR", default_value = ".wafer")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the platform: gateway and runner pool on the embedded stores.
    Serve(commands::serve::Args),
    /// Upload a module and create a new version of a function.
    Deploy(commands::deploy::Args),
    /// Invoke a function and print its response body.
    Invoke(commands::invoke::Args),
    /// List functions.
    Ls(commands::manage::LsArgs),
    /// List the versions of a function.
    Versions(commands::manage::VersionsArgs),
    /// Show the recent invocation logs (stderr) of a function.
    Logs(commands::manage::LogsArgs),
    /// Point a function's `latest` alias back at an earlier version.
    Rollback(commands::manage::RollbackArgs),
    /// Delete a function with all its versions.
    Rm(commands::manage::RmArgs),
    /// Asynchronous jobs: list, inspect, wait for, cancel, read results and logs.
    #[command(subcommand)]
    Jobs(commands::jobs::JobsCommand),
    /// Run jobs of one lane for a server until idle (the server starts workers itself).
    Worker(commands::worker::Args),
    /// Print the credential of a lane's workers, derived from the server's runner key in
    /// `--data-dir`: for workers run by hand or elsewhere, which then need not hold that key.
    RunnerCredential(commands::worker::CredentialArgs),
    /// Show runner processes alive and jobs per lane (scope metrics).
    Status(commands::manage::StatusArgs),
    /// The response cache: run it as a sidecar in front of a gateway, or purge a function's
    /// kept answers.
    Cache(commands::cache::Args),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(commands::manage::KeysCommand),
    /// Internal: compile one module in an isolated process (paths as arguments, or one job
    /// read from stdin after warming up).
    #[command(name = "__compile", hide = true)]
    Compile {
        input: Option<PathBuf>,
        output: Option<PathBuf>,
        /// Confine the worker to this directory (Landlock) before it reads anything.
        #[arg(long)]
        confine: Option<PathBuf>,
    },
    /// Internal: print (as a JSON array) the qemu command line that boots a guest as the `vm`
    /// provisioner does, emulated, its console on qemu's standard output; the tests boot
    /// their guests with it.
    #[command(name = "__vm-command", hide = true)]
    QemuLine {
        #[arg(long)]
        kernel: PathBuf,
        #[arg(long)]
        initramfs: PathBuf,
        /// The agent's Unix socket.
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 512)]
        memory_mb: u64,
        /// The VM's qemu `-name`.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    if wafer_worker::vm::agent::is_guest_init() {
        wafer_worker::vm::agent::main();
    }
    let cli = Cli::parse();
    if let Command::Compile {
        input,
        output,
        confine,
    } = &cli.command
    {
        let paths = input.as_deref().zip(output.as_deref());
        let code = wafer_runner::compile_worker_main(paths, confine.as_deref());
        return ExitCode::from(code as u8);
    }
    if let Command::QemuLine {
        kernel,
        initramfs,
        socket,
        memory_mb,
        name,
    } = &cli.command
    {
        use wafer_worker::vm::{Accel, VmOptions, qemu_command};
        let opts = VmOptions::default();
        let args = qemu_command(
            &opts,
            Accel::Tcg,
            kernel,
            initramfs,
            socket,
            *memory_mb,
            name,
        );
        println!("{}", serde_json::Value::from(args));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let client = || client::Client::new(&cli.url, cli.api_key.clone(), &cli.data_dir);
        match &cli.command {
            Command::Serve(a) => commands::serve::run(a, &cli.data_dir).await,
            Command::Deploy(a) => commands::deploy::run(&client()?, a).await,
            Command::Invoke(a) => commands::invoke::run(&client()?, a).await,
            Command::Ls(a) => commands::manage::ls(&client()?, a).await,
            Command::Versions(a) => commands::manage::versions(&client()?, a).await,
            Command::Logs(a) => commands::manage::logs(&client()?, a).await,
            Command::Rollback(a) => commands::manage::rollback(&client()?, a).await,
            Command::Rm(a) => commands::manage::rm(&client()?, a).await,
            Command::Keys(k) => commands::manage::keys(&client()?, k).await,
            Command::Jobs(j) => commands::jobs::run(&client()?, j).await,
            Command::Worker(a) => {
                commands::serve::init_logging();
                commands::worker::run(a).await
            }
            Command::RunnerCredential(a) => commands::worker::credential(a, &cli.data_dir),
            Command::Status(a) => commands::manage::status(&client()?, a).await,
            Command::Cache(a) => match &a.command {
                Some(c) => commands::cache::purge(&client()?, c).await,
                None => {
                    commands::serve::init_logging();
                    commands::cache::run(a).await
                }
            },
            Command::Compile { .. } | Command::QemuLine { .. } => {
                unreachable!("handled above")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<client::CliError>()
                .map(|c| c.exit_code())
                .unwrap_or(1);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
