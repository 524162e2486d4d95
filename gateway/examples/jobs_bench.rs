//! Job benchmark (not a test; run by `scripts/bench-jobs.sh`): a trivial function (`echo`)
//! as jobs through the embedded queue and through Redis Streams with 1 and 2 workers, then
//! enqueue→start latency with a warm worker, from zero (no runner process) on the worker
//! path, and from zero on the local dedicated path. Times come from the jobs' own records
//! (queued, started, finished), taken by the server.
//!
//! Usage: jobs_bench <wafer binary> <echo.wasm> [jobs]
//!
//! With `vm` first (`scripts/bench-vm.sh`): a trivial long job (`echo`) on the `local`
//! provisioner and on the `vm` provisioner (a microVM per job), best of `rounds` each:
//! enqueue→start, boot→agent ready, compile in the guest, enqueue→end.
//!
//! Usage: jobs_bench vm <wafer binary> <echo.wasm> <image.json> [rounds]

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
    key: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(wafer: &str, config: &str) -> Res<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    std::fs::write(dir.path().join("wafer.toml"), config)?;
    let child = Command::new(wafer)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(dir.path().join("wafer.toml"))
        .env("WAFER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    for _ in 0..400 {
        if http.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let key = std::fs::read_to_string(dir.path().join("data/admin.key"))?
        .trim()
        .to_owned();
    Ok(Server {
        child,
        _dir: dir,
        url,
        key,
        http,
    })
}

impl Server {
    async fn deploy(&self, name: &str, wasm: &[u8], spec: Value) -> Res<()> {
        let up: Value = self
            .http
            .put(format!("{}/v1/modules", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/wasm")
            .body(wasm.to_vec())
            .send()
            .await?
            .json()
            .await?;
        let mut s = json!({"module": up["digest"]});
        if let Value::Object(m) = spec {
            for (k, v) in m {
                s[k] = v;
            }
        }
        let r = self
            .http
            .put(format!("{}/v1/functions/{name}", self.url))
            .bearer_auth(&self.key)
            .json(&s)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("deploy {name}: {}", r.text().await?).into());
        }
        Ok(())
    }

    async fn submit(&self, function: &str) -> Res<String> {
        let v: Value = self
            .http
            .post(format!("{}/v1/jobs", self.url))
            .bearer_auth(&self.key)
            .json(&json!({"function": function, "input": "x"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["id"].as_str().ok_or("no job id")?.to_owned())
    }

    async fn wait(&self, id: &str) -> Res<Value> {
        loop {
            let v: Value = self
                .http
                .get(format!("{}/v1/jobs/{id}?wait=30s", self.url))
                .bearer_auth(&self.key)
                .send()
                .await?
                .json()
                .await?;
            match v["status"].as_str() {
                Some("succeeded") => return Ok(v),
                Some("queued" | "running") => continue,
                _ => return Err(format!("job ended badly: {v}").into()),
            }
        }
    }

    async fn runners(&self, kind: &str) -> Res<u64> {
        let v: Value = self
            .http
            .get(format!("{}/v1/admin/status", self.url))
            .bearer_auth(&self.key)
            .send()
            .await?
            .json()
            .await?;
        Ok(v["runners"][kind].as_u64().unwrap_or(0))
    }
}

fn timing(v: &Value, field: &str) -> u64 {
    v["timings"][field].as_u64().unwrap_or(0)
}

/// `n` jobs submitted by 64 clients at once: jobs per second from the first queued to the
/// last finished, as the records say.
async fn throughput(s: &Server, n: usize) -> Res<f64> {
    let s = std::sync::Arc::new(s);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = futures::future::join_all((0..64).map(|_| {
        let (s, next) = (s.clone(), &next);
        async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                ids.push(s.submit("echo").await?);
            }
            let mut out = Vec::new();
            for id in ids {
                out.push(s.wait(&id).await?);
            }
            Res::Ok(out)
        }
    }))
    .await;
    let mut first = u64::MAX;
    let mut last = 0;
    for r in results {
        for v in r? {
            first = first.min(timing(&v, "queued_at_ms"));
            last = last.max(timing(&v, "finished_at_ms"));
        }
    }
    Ok(n as f64 * 1000.0 / (last.saturating_sub(first).max(1)) as f64)
}

/// Enqueue→start of `rounds` jobs run one after another, in ms, sorted.
async fn latencies(
    s: &Server,
    function: &str,
    rounds: usize,
    from_zero: Option<&str>,
) -> Res<Vec<u64>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        if let Some(kind) = from_zero {
            let t = Instant::now();
            while s.runners(kind).await? > 0 {
                if t.elapsed() > Duration::from_secs(30) {
                    return Err("runners never went away".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let id = s.submit(function).await?;
        let v = s.wait(&id).await?;
        out.push(timing(&v, "started_at_ms") - timing(&v, "queued_at_ms"));
    }
    out.sort_unstable();
    Ok(out)
}

fn pct(v: &[u64], p: usize) -> u64 {
    v[((v.len() * p).div_ceil(100)).max(1) - 1]
}

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Res<Redis> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Redis {
        child,
        port,
        _dir: dir,
    })
}

/// The times of the jobs of one provisioner, ms.
#[derive(Debug, Default)]
struct VmRuns {
    provisioner: &'static str,
    /// Enqueue to the job's start (in a VM: once the guest agent is ready).
    start: Vec<u64>,
    /// qemu's start to the agent's ready line.
    ready: Vec<u64>,
    /// Compiling the module in the guest.
    compile: Vec<u64>,
    /// Enqueue to the job's end.
    end: Vec<u64>,
}

/// Best of `rounds` trivial long jobs on the local and on the vm provisioner.
async fn vm_bench(args: &[String]) -> Res<()> {
    let (wafer, echo, image) = (&args[2], std::fs::read(&args[3])?, &args[4]);
    let rounds: usize = args.get(5).map_or(Ok(3), |s| s.parse())?;
    let best = |v: &[u64]| v.iter().copied().min().unwrap_or(0);
    let mut rows = Vec::new();
    for provisioner in ["local", "vm"] {
        let s = start(
            wafer,
            &format!(
                "[jobs.long]\nprovisioner = \"{provisioner}\"\n[jobs.long.vm]\nimage = \"{image}\"\n"
            ),
        )
        .await?;
        s.deploy("batch", &echo, json!({"class": "long"})).await?;
        let mut runs = VmRuns {
            provisioner,
            ..Default::default()
        };
        for _ in 0..rounds {
            let t = Instant::now();
            while s.runners("dedicated").await? > 0 {
                if t.elapsed() > Duration::from_secs(60) {
                    return Err("runners never went away".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let id = s.submit("batch").await?;
            let v = s.wait(&id).await?;
            if provisioner == "vm" && v["runner"]["kind"] != "vm" {
                return Err(format!("the job did not run in a VM: {v}").into());
            }
            let queued = timing(&v, "queued_at_ms");
            let ready = v["runner"]["ready_ms"].as_u64().unwrap_or(0);
            runs.start
                .push(timing(&v, "started_at_ms") + ready - queued);
            runs.ready.push(ready);
            runs.compile
                .push(v["runner"]["compile_ms"].as_u64().unwrap_or(0));
            runs.end.push(timing(&v, "finished_at_ms") - queued);
        }
        if provisioner == "vm" {
            let metrics = s
                .http
                .get(format!("{}/metrics", s.url))
                .bearer_auth(&s.key)
                .send()
                .await?
                .text()
                .await?;
            for line in metrics.lines().filter(|l| l.starts_with("wafer_vm_accel{")) {
                println!("{line}");
            }
        }
        rows.push(runs);
    }
    println!(
        "trivial long job (echo), best of {rounds} (ms)   enqueue->start  boot->ready  guest compile  enqueue->end"
    );
    for r in &rows {
        println!(
            "  {:<40} {:>14} {:>12} {:>14} {:>13}",
            r.provisioner,
            best(&r.start),
            best(&r.ready),
            best(&r.compile),
            best(&r.end)
        );
    }
    println!("all runs: {rows:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("vm") {
        return vm_bench(&args).await;
    }
    let (wafer, echo) = (&args[1], std::fs::read(&args[2])?);
    let n: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
    println!("{:<44} {:>12}", "jobs/s (trivial function, 64 clients)", "");
    for backend in ["embedded", "redis"] {
        for workers in [1, 2] {
            let redis = (backend == "redis").then(redis).transpose()?;
            let queue = match &redis {
                Some(r) => format!(
                    "[queue]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
                    r.port
                ),
                None => String::new(),
            };
            let s = start(
                wafer,
                &format!(
                    "{queue}[jobs]\nworkers = {workers}\nworker_concurrency = 16\n\
                     worker_idle_ms = 600000\nfast_lane_ms = 0\n"
                ),
            )
            .await?;
            s.deploy("echo", &echo, json!({})).await?;
            throughput(&s, 100).await?;
            let rate = throughput(&s, n).await?;
            println!("  {backend:<9} {workers} worker(s) {:>27.0} jobs/s", rate);
        }
    }
    println!("enqueue -> start (ms)                          p50    p99");
    let s = start(
        wafer,
        "[jobs]\nworkers = 1\nworker_idle_ms = 600000\nfast_lane_ms = 0\n",
    )
    .await?;
    s.deploy("echo", &echo, json!({})).await?;
    latencies(&s, "echo", 5, None).await?;
    let warm = latencies(&s, "echo", 200, None).await?;
    println!(
        "  worker, warm                          {:>8} {:>6}",
        pct(&warm, 50),
        pct(&warm, 99)
    );
    drop(s);
    let s = start(
        wafer,
        "[jobs]\nworkers = 1\nworker_idle_ms = 200\nfast_lane_ms = 0\n",
    )
    .await?;
    s.deploy("echo", &echo, json!({})).await?;
    s.deploy("batch", &echo, json!({"class": "long"})).await?;
    let zero = latencies(&s, "echo", 20, Some("workers")).await?;
    println!(
        "  worker, from zero                     {:>8} {:>6}",
        pct(&zero, 50),
        pct(&zero, 99)
    );
    let dedicated = latencies(&s, "batch", 20, Some("dedicated")).await?;
    println!(
        "  local dedicated runner, from zero     {:>8} {:>6}",
        pct(&dedicated, 50),
        pct(&dedicated, 99)
    );
    Ok(())
}
