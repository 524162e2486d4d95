//! Helpers for end-to-end tests: start the real `wafer` binary on a free port with a
//! temporary data directory, talk to it over HTTP and through the CLI, kill it on drop.

pub mod jobs;
pub mod vm;
pub mod wasm;

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `wafer` binary under test: `WAFER_BIN`, or the one next to this test's target dir.
pub fn wafer_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WAFER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("wafer");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p wafer) or set WAFER_BIN",
        bin.display()
    );
    bin
}

/// A built test function: `functions/dist/<name>.wasm`.
pub fn function(name: &str) -> PathBuf {
    let dir = std::env::var("WAFER_FUNCTIONS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/dist"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} not found: run functions/build.sh",
        p.display()
    );
    p
}

/// The bytes of a built test function.
pub fn function_bytes(name: &str) -> Vec<u8> {
    std::fs::read(function(name)).expect("read function")
}

/// A running `wafer serve`.
pub struct TestServer {
    child: Child,
    dir: tempfile::TempDir,
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// The admin key read from the data directory.
    pub admin_key: String,
    /// What the server printed on its first start (the admin key line).
    pub first_stdout: Vec<String>,
    http: Client,
    /// A file system mounted on the data directory, unmounted when the server goes.
    mounted: Option<PathBuf>,
}

impl TestServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts a server with a TOML config file of `config` (empty for defaults).
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Starts a server with a config file of `config` and extra environment variables.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), None, config, env)
    }

    /// Starts a server with a config file of `config` whose data directory is a tmpfs of
    /// `size_mb` MiB, so that it can be filled. Mounting needs root (CI runs as root); the
    /// test fails, saying so, where that is not allowed.
    pub fn start_on_tmpfs(size_mb: u64, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&data)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs for the data directory failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_in(dir, Some(data), config, &[])
    }

    fn start_in(
        dir: tempfile::TempDir,
        mounted: Option<PathBuf>,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = (!config.is_empty()).then(|| config.to_owned());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, url, lines) = spawn(dir.path(), config.as_deref(), &env);
        let admin_key = std::fs::read_to_string(dir.path().join("data/admin.key"))
            .expect("admin key written")
            .trim()
            .to_owned();
        Self {
            child,
            dir,
            config,
            env,
            url,
            admin_key,
            first_stdout: lines,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            mounted,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server with SIGKILL (no graceful shutdown) and starts it again on the same
    /// data directory. Returns what it printed while starting.
    pub fn kill_and_restart(&mut self) -> Vec<String> {
        self.kill();
        let (child, url, lines) = spawn(self.dir.path(), self.config.as_deref(), &self.env);
        self.child = child;
        self.url = url;
        lines
    }

    /// Sends SIGTERM (graceful shutdown) and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Sends `sig` to the server without waiting.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for the server process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for wafer serve")
    }

    /// Replaces the extra environment of the next (re)start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Waits (bounded: about 10 s) for the server process to end by itself.
    pub fn wait_for_exit(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..1000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory now, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    /// A size field of the server's `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect(field)
            * 1024
    }

    /// Uploads `bytes` with `key` and creates a version of `name` with `spec` merged in;
    /// panics unless both succeed.
    pub fn deploy_bytes(&self, key: &str, name: &str, bytes: Vec<u8>, spec: Value) -> u64 {
        let r = self.upload(key, bytes);
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert!(status.is_success(), "upload for {name}: {status} {body}");
        let mut s = json!({"module": body["digest"]});
        if let Value::Object(m) = spec {
            for (k, v) in m {
                s[k] = v;
            }
        }
        let r = self
            .with_key(key, reqwest::Method::PUT, &format!("/v1/functions/{name}"))
            .json(&s)
            .send()
            .expect("put function");
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert_eq!(status, 201, "create {name}: {body}");
        body["version"].as_u64().unwrap()
    }

    /// The `host:port` the server listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.with_key(&self.admin_key.clone(), method, path)
    }

    /// A request with the given key.
    pub fn with_key(&self, key: &str, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(key)
    }

    /// A request without a key.
    pub fn anon(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.url, path))
    }

    /// Creates a key for `tenant` with deploy, invoke and read scopes.
    pub fn tenant_key(&self, tenant: &str) -> String {
        self.key_with_scopes(tenant, &["deploy", "invoke", "read"])
    }

    /// Creates a key for `tenant` with exactly `scopes`.
    pub fn key_with_scopes(&self, tenant: &str, scopes: &[&str]) -> String {
        let r = self
            .admin(reqwest::Method::POST, "/v1/keys")
            .json(&json!({"tenant": tenant, "scopes": scopes}))
            .send()
            .expect("create key");
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Uploads a module with `key`; returns the response.
    pub fn upload(&self, key: &str, bytes: Vec<u8>) -> Response {
        self.with_key(key, reqwest::Method::PUT, "/v1/modules")
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .expect("upload")
    }

    /// Uploads a module with the admin key, returning the transport error if the connection
    /// fails (the server went away).
    pub fn upload_result(&self, bytes: Vec<u8>) -> reqwest::Result<Response> {
        self.admin(reqwest::Method::PUT, "/v1/modules")
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
    }

    /// Uploads test function `file` and creates a version of `name` with `spec` merged in.
    /// Panics unless both succeed; returns the version number.
    pub fn deploy_as(&self, key: &str, name: &str, file: &str, spec: Value) -> u64 {
        self.deploy_bytes(key, name, function_bytes(file), spec)
    }

    /// [`Self::deploy_as`] with the admin key.
    pub fn deploy(&self, name: &str, file: &str, spec: Value) -> u64 {
        self.deploy_as(&self.admin_key.clone(), name, file, spec)
    }

    /// Invokes a function with the admin key.
    pub fn invoke(&self, name: &str, body: &[u8]) -> Response {
        self.admin(reqwest::Method::POST, &format!("/fn/{name}"))
            .body(body.to_vec())
            .send()
            .expect("invoke")
    }

    /// Asserts the server still serves a freshly deployed `hello` (used after hostile tests).
    pub fn assert_still_serving(&self) {
        self.deploy("still-alive", "hello", json!({}));
        let r = self
            .admin(reqwest::Method::GET, "/fn/still-alive?name=ok")
            .send()
            .expect("invoke hello");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), "Hello, ok!\n");
    }

    /// The `/metrics` text, read with the admin key.
    pub fn metrics(&self) -> String {
        self.admin(reqwest::Method::GET, "/metrics")
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// Waits until `/metrics` shows `n` invocations in flight (bounded: about 5 s).
    pub fn wait_in_flight(&self, n: u64) -> bool {
        let needle = format!("wafer_invocations_in_flight {n}\n");
        for _ in 0..500 {
            let m = self.metrics();
            if m.contains(&needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Opens a raw connection and sends the head of a module upload declaring
    /// `content_length` bytes, followed by `body` (which may be shorter: the rest never comes).
    pub fn raw_upload(&self, content_length: usize, body: &[u8]) -> TcpStream {
        let mut sock = TcpStream::connect(self.url.trim_start_matches("http://")).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        write!(
            sock,
            "PUT /v1/modules HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/wasm\r\nContent-Length: {content_length}\r\n\r\n",
            self.admin_key
        )
        .expect("write head");
        sock.write_all(body).expect("write body");
        sock.flush().expect("flush");
        sock
    }

    /// Deploys a built test function through the CLI, asserting success.
    pub fn cli_deploy(&self, name: &str, file: &str) {
        let path = function(file);
        let o = self.cli(&["deploy", name, path.to_str().expect("utf-8 path")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Runs the CLI against this server with the admin key.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[("WAFER_API_KEY", &self.admin_key)])
    }

    /// Runs the CLI against this server with extra environment.
    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(wafer_bin());
        cmd.args(args)
            .env("WAFER_URL", &self.url)
            .env_remove("WAFER_API_KEY")
            .env_remove("WAFER_DATA_DIR")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run wafer")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(m) = self.mounted.take() {
            let _ = self.child.wait();
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

fn spawn(
    dir: &Path,
    config: Option<&str>,
    env: &[(String, String)],
) -> (Child, String, Vec<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log file");
    let mut cmd = Command::new(wafer_bin());
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("WAFER_LOG", "info,wafer_gateway=debug")
        .env_remove("WAFER_API_KEY")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    if let Some(c) = config {
        let path = dir.join("wafer.toml");
        std::fs::write(&path, c).expect("write config");
        cmd.arg("--config").arg(path);
    }
    let mut child = cmd.spawn().expect("spawn wafer serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // After start-up nobody listens; keep draining so the server never blocks.
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("wafer listening on ") {
                    return (child, url.trim().to_owned(), lines);
                }
                lines.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("wafer serve did not start; output {lines:?}; log:\n{log}");
            }
        }
    }
}

/// The pids of `parent`'s live children (zombies, killed and not yet reaped, run nothing).
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let mut fields = after.split(' ');
        let state = fields.next().unwrap();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == parent && state != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Reads the first bytes of the answer on a raw connection (status line and headers).
pub fn read_head(sock: &mut TcpStream) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.read(&mut buf).expect("read answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Parses a response as problem+json and checks status and problem slug.
pub fn assert_problem(resp: Response, status: u16, slug: &str) -> Value {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let text = resp.text().unwrap_or_default();
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(ct, "application/problem+json", "content type; body: {text}");
    let v: Value = serde_json::from_str(&text).expect("problem is JSON");
    assert_eq!(
        v["type"],
        format!("https://wafer.dev/problems/{slug}"),
        "problem type; body: {text}"
    );
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string() && v["detail"].is_string(), "{text}");
    v
}

/// A `redis-server` of a test's own, on a free port, with AOF (`appendfsync always`) in a
/// temporary directory; killed on drop. The test command installs Redis when it is missing.
pub struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Self::spawn(dir.path(), port);
        Self { child, dir, port }
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let mut child = child;
        for _ in 0..500 {
            if redis_command(port, &["PING"]).is_some_and(|r| r.contains("PONG")) {
                return child;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and starts it again on the same port and directory.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), self.port);
    }

    /// Kills it with SIGKILL (it stays down).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGSTOP: connections stay open and nothing is answered.
    pub fn pause(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    /// Lets it go on after [`RedisServer::pause`].
    pub fn resume(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    /// Starts it again after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command to the Redis on `port` and returns its raw RESP answer.
pub fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends one command with binary arguments to the Redis on `port`; returns the first line of
/// its answer.
pub fn redis_command_bytes(port: u16, args: &[&[u8]]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line)
}

/// The keys matching `pattern` in the Redis on `port`.
pub fn redis_keys(port: u16, pattern: &str) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("redis");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let req = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
    w.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let n: usize = line
        .trim()
        .strip_prefix('*')
        .expect("array")
        .parse()
        .unwrap();
    (0..n)
        .map(|_| {
            let mut len = String::new();
            r.read_line(&mut len).unwrap();
            let mut key = String::new();
            r.read_line(&mut key).unwrap();
            key.trim_end().to_owned()
        })
        .collect()
}

/// `wafer cache` as a sidecar in front of a gateway, on a free port; killed on drop.
pub struct CacheSidecar {
    child: Child,
    _dir: tempfile::TempDir,
    /// Base URL, e.g. `http://127.0.0.1:40124`.
    pub url: String,
}

impl CacheSidecar {
    /// Starts one in front of `upstream` with extra flags and a config file of `config`
    /// (empty for defaults).
    pub fn start(upstream: &str, config: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("cache.log")).expect("log");
        let mut cmd = Command::new(wafer_bin());
        cmd.args(["cache", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(flags)
            .env("WAFER_LOG", "info,wafer_gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if !config.is_empty() {
            let path = dir.path().join("wafer.toml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().expect("spawn wafer cache");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("sidecar output");
        let Some(url) = first
            .strip_prefix("wafer cache listening on ")
            .and_then(|r| r.split(',').next())
        else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("cache.log")).unwrap_or_default();
            panic!("wafer cache did not start: {first:?}; log:\n{log}");
        };
        Self {
            url: url.trim().to_owned(),
            child,
            _dir: dir,
        }
    }

    /// Its own metrics.
    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/_cache/metrics", self.url))
            .and_then(|r| r.text())
            .expect("sidecar metrics")
    }
}

impl Drop for CacheSidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many times `function` ran successfully on `s`, from its `/metrics`.
pub fn runs(s: &TestServer, function: &str) -> u64 {
    let text = s.metrics();
    // Before the first invocation the counter has no samples, and no TYPE line either: 0
    // then, but only on a real metrics page.
    if !text.contains("# TYPE wafer_invocations ") {
        assert!(
            text.contains("# TYPE wafer_invocations_in_flight gauge"),
            "not a metrics page: {text}"
        );
        return 0;
    }
    metric(
        &text,
        &format!("wafer_invocations_total{{function=\"{function}\",outcome=\"ok\"}}"),
    )
}

/// The value of the sample `name{labels}` in a metrics text. A sample that is absent reads as
/// 0 only when its metric is there (a counter not yet counted for these labels); a metric the
/// text does not have at all fails the test, so a renamed metric cannot pass as 0.
pub fn metric(text: &str, sample: &str) -> u64 {
    if let Some(n) = text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
    {
        return n.trim().parse().expect("a number");
    }
    let name = sample.split('{').next().unwrap_or(sample);
    let family = name.strip_suffix("_total").unwrap_or(name);
    assert!(
        text.lines()
            .any(|l| l.strip_prefix("# TYPE ").and_then(|r| r.split(' ').next()) == Some(family)),
        "no metric {family} in:\n{text}"
    );
    0
}

/// The `x-cache` header of an answer ("" when absent).
pub fn x_cache(r: &Response) -> String {
    r.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}
