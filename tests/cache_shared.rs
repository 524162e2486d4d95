//! The response cache beyond one process: the Redis level shared by gateways (a real
//! `redis-server` per test, on its own port), what a Redis that is down, slow or holding
//! damaged entries does to calls (nothing but misses), and `wafer cache` as a sidecar in
//! front of a gateway.

use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wafer_e2e::{
    CacheSidecar, RedisServer, TestServer, assert_problem, metric, redis_command,
    redis_command_bytes, redis_keys, runs, x_cache,
};

/// The secret the tests' gateways and sidecars seal the shared level's entries with.
const SECRET: &str = "the servers' own secret, 32 chars or more";

/// A config whose shared level is the Redis at `url`.
fn shared(url: &str, timeout_ms: u64) -> String {
    format!(
        "[cache.shared]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout_ms = {timeout_ms}\n\
         generation_ttl_ms = 300\n"
    )
}

/// An entry of the shared level as a cache with `secret` seals it: a 200 answer with `body`,
/// fresh for a minute.
fn sealed_answer(secret: &[u8], key_hex: &str, body: &[u8]) -> Vec<u8> {
    use hmac::Mac as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut rest = Vec::new();
    rest.extend_from_slice(&200u16.to_le_bytes());
    rest.extend_from_slice(&now.to_le_bytes());
    rest.extend_from_slice(&60_000u64.to_le_bytes());
    rest.extend_from_slice(&0u64.to_le_bytes());
    rest.extend_from_slice(&0u32.to_le_bytes());
    rest.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rest.extend_from_slice(body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(&hex::decode(key_hex).unwrap());
    mac.update(&[0]);
    mac.update(&rest);
    let mut out = b"WFC2".to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.push(0);
    out.extend_from_slice(&rest);
    out
}

#[test]
fn whoever_writes_to_the_redis_without_the_secret_cannot_plant_an_answer() {
    let redis = RedisServer::start();
    let cfg = shared(&redis.url(), 2000);
    let a = TestServer::start_with_config(&cfg);
    a.deploy("hello", "hello", SPEC());
    assert_eq!(x_cache(&get(&a, "m")), "miss");
    eventually("stored", || entries(&redis).len() == 1);
    let name = entries(&redis).remove(0);
    let key_hex = name.rsplit(':').next().unwrap().to_owned();

    // An entry in the right form under the right key, sealed without the servers' secret:
    // refused, the function runs.
    let planted = sealed_answer(b"a guess at the secret", &key_hex, b"planted");
    redis_command_bytes(redis.port, &[b"SET", name.as_bytes(), &planted]).unwrap();
    let b = TestServer::start_with_config(&cfg);
    b.deploy("hello", "hello", SPEC());
    let r = get(&b, "m");
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().unwrap(), "Hello, m!\n");
    assert_eq!(shared_count(&b.metrics(), "invalid"), 1);

    // The same entry sealed with the secret is served: the refusal above was the seal's.
    let sealed = sealed_answer(SECRET.as_bytes(), &key_hex, b"sealed");
    redis_command_bytes(redis.port, &[b"SET", name.as_bytes(), &sealed]).unwrap();
    let c = TestServer::start_with_config(&cfg);
    c.deploy("hello", "hello", SPEC());
    let r = get(&c, "m");
    assert_eq!(x_cache(&r), "hit");
    assert_eq!(r.text().unwrap(), "sealed");
}

#[test]
fn a_shared_level_without_a_secret_is_refused_at_start() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wafer.toml");
    std::fs::write(
        &config,
        format!("[cache.shared]\nurl = \"{}\"\n", redis.url()),
    )
    .unwrap();
    let mut child = std::process::Command::new(wafer_e2e::wafer_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("WAFER_CACHE_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the server started with a shared level and no secret");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("WAFER_CACHE_SECRET"), "{err}");
}

const SPEC: fn() -> Value = || json!({"public": true, "cache": {"ttl_ms": 60000}});

/// The shared-level counter of `result` on a metrics text.
fn shared_count(metrics: &str, result: &str) -> u64 {
    metric(
        metrics,
        &format!("wafer_cache_shared_total{{result=\"{result}\"}}"),
    )
}

/// Waits until `cond` holds, for at most 10 s.
fn eventually(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The entries in the shared level.
fn entries(redis: &RedisServer) -> Vec<String> {
    redis_keys(redis.port, "wafer:cache:e:*")
}

fn get(s: &TestServer, q: &str) -> reqwest::blocking::Response {
    s.anon(Method::GET, &format!("/fn/hello?name={q}"))
        .send()
        .unwrap()
}

#[test]
fn two_gateways_share_the_redis_level_and_a_purge_reaches_both() {
    let redis = RedisServer::start();
    let a = TestServer::start_with_config(&shared(&redis.url(), 2000));
    let b = TestServer::start_with_config(&shared(&redis.url(), 2000));
    let (ka, kb) = (a.tenant_key("alpha"), b.tenant_key("alpha"));
    a.deploy_as(&ka, "hello", "hello", SPEC());
    b.deploy_as(&kb, "hello", "hello", SPEC());
    assert_eq!(x_cache(&get(&a, "l2")), "miss");
    eventually("the answer reaches Redis", || entries(&redis).len() == 1);
    // Kept in Redis for the answer's lifetime, not for ever.
    let ttl = redis_command(redis.port, &["PTTL", &entries(&redis)[0]]).unwrap();
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");
    let r = get(&b, "l2");
    assert_eq!(x_cache(&r), "hit", "b answers with a's entry");
    assert_eq!(r.text().unwrap(), "Hello, l2!\n");
    assert_eq!(runs(&b, "hello"), 0, "b never ran the function");
    assert_eq!(runs(&a, "hello"), 1);
    assert_eq!(shared_count(&b.metrics(), "hit"), 1);
    // Another tenant calling the same public function on b gets an answer of its own.
    let beta = b.tenant_key("beta");
    let r = b
        .with_key(&beta, Method::GET, "/fn/hello?name=l2")
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "miss");
    // A purge on a reaches b's own entries within the generation's time to live.
    eventually("beta's answer reaches Redis", || entries(&redis).len() == 2);
    let r = a
        .with_key(&ka, Method::DELETE, "/v1/functions/hello/cache")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let took = eventually("b sees the purge", || x_cache(&get(&b, "l2")) == "miss");
    assert!(took < Duration::from_secs(3), "purge took {took:?}");
    eventually("b's new answer reaches Redis", || {
        entries(&redis).len() == 3
    });
    assert_eq!(
        x_cache(&get(&a, "l2")),
        "hit",
        "b's new answer, through Redis"
    );
}

#[test]
fn a_redis_that_is_down_or_slow_never_fails_a_call() {
    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = TestServer::start_with_config(&shared(&format!("redis://127.0.0.1:{port}"), 100));
    s.deploy("hello", "hello", SPEC());
    let r = get(&s, "down");
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().unwrap(), "Hello, down!\n");
    assert_eq!(
        x_cache(&get(&s, "down")),
        "hit",
        "the in-process level still works"
    );
    assert!(shared_count(&s.metrics(), "error") >= 1, "counted");
    // The purge cannot reach the shared level: it says so, and the local answers are gone.
    let r = s
        .admin(Method::DELETE, "/v1/functions/hello/cache")
        .send()
        .unwrap();
    assert_problem(r, 503, "cache-unavailable");
    assert_eq!(x_cache(&get(&s, "down")), "miss");

    // A Redis that stops answering: every call still gets its answer, past the deadline.
    let redis = RedisServer::start();
    let s = TestServer::start_with_config(&shared(&redis.url(), 100));
    s.deploy("hello", "hello", SPEC());
    assert_eq!(x_cache(&get(&s, "before")), "miss");
    eventually("connected and stored", || entries(&redis).len() == 1);
    redis.pause();
    let errors = shared_count(&s.metrics(), "error");
    for q in ["slow1", "slow2"] {
        let started = Instant::now();
        let r = get(&s, q);
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().unwrap(), format!("Hello, {q}!\n"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a paused Redis held the call for {:?}",
            started.elapsed()
        );
    }
    assert!(shared_count(&s.metrics(), "error") > errors);
    redis.resume();
}

#[test]
fn damaged_and_oversized_entries_in_redis_are_ignored() {
    let redis = RedisServer::start();
    let cfg = shared(&redis.url(), 2000);
    let a = TestServer::start_with_config(&cfg);
    a.deploy("hello", "hello", SPEC());
    assert_eq!(x_cache(&get(&a, "p")), "miss");
    eventually("stored", || entries(&redis).len() == 1);
    let key = entries(&redis).remove(0);

    // Garbage under the key: another gateway runs the function instead of serving it.
    redis_command_bytes(redis.port, &[b"SET", key.as_bytes(), b"WFC2 not an entry"]).unwrap();
    let b = TestServer::start_with_config(&cfg);
    b.deploy("hello", "hello", SPEC());
    let r = get(&b, "p");
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().unwrap(), "Hello, p!\n");
    assert_eq!(runs(&b, "hello"), 1);
    assert_eq!(shared_count(&b.metrics(), "invalid"), 1);
    eventually("b's answer replaced the garbage", || {
        shared_count(&b.metrics(), "stored") == 1
    });

    // An entry far over the size cap is not even read whole.
    let mut huge = b"WFC2".to_vec();
    huge.resize(3 << 20, b'x');
    redis_command_bytes(redis.port, &[b"SET", key.as_bytes(), &huge]).unwrap();
    let c = TestServer::start_with_config(&cfg);
    c.deploy("hello", "hello", SPEC());
    let r = get(&c, "p");
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().unwrap(), "Hello, p!\n");
    assert_eq!(shared_count(&c.metrics(), "oversized"), 1);
}

fn via(
    c: &CacheSidecar,
    key: Option<&str>,
    method: Method,
    path: &str,
) -> reqwest::blocking::Response {
    let mut rb = reqwest::blocking::Client::new().request(method, format!("{}{path}", c.url));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    rb.send().unwrap()
}

#[test]
fn the_sidecar_in_front_of_a_gateway_gives_the_same_answers() {
    // The gateway caches nothing itself: every hit below is the sidecar's.
    let g = TestServer::start_with_config("[cache]\nenabled = false\n");
    g.deploy("hello", "hello", SPEC());
    g.deploy("secret", "hello", json!({"cache": {"ttl_ms": 60000}}));
    let c = CacheSidecar::start(&g.url, "", &["--scope-ttl", "300ms"]);

    let direct = get(&g, "side");
    assert_eq!(x_cache(&direct), "", "no cache in the gateway");
    let (dv, db) = (
        direct.headers()["x-wafer-version"].clone(),
        direct.text().unwrap(),
    );
    for how in ["miss", "hit"] {
        let r = via(&c, None, Method::GET, "/fn/hello?name=side");
        assert_eq!(r.status(), 200);
        assert_eq!(x_cache(&r), how);
        assert_eq!(r.headers()["x-wafer-version"], dv);
        assert_eq!(r.text().unwrap(), db);
    }
    assert_eq!(
        runs(&g, "hello"),
        2,
        "the direct call and the sidecar's miss"
    );
    assert_eq!(
        metric(&c.metrics(), "wafer_cache_lookups_total{result=\"hit\"}"),
        1
    );

    // A private function: refused through the sidecar exactly as by the gateway, and the
    // owner's answers are the owner's.
    let r = via(&c, None, Method::GET, "/fn/secret?name=x");
    assert_problem(r, 404, "function-not-found");
    for how in ["miss", "hit"] {
        let r = via(&c, Some(&g.admin_key), Method::GET, "/fn/secret?name=x");
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, how.to_owned()));
    }
    let r = via(&c, None, Method::GET, "/fn/secret?name=x");
    assert_problem(r, 404, "function-not-found");
    let r = via(&c, Some("wfr_wrong"), Method::GET, "/fn/secret?name=x");
    assert_problem(r, 401, "unauthorized");

    // Everything else passes through untouched.
    let r = via(&c, Some(&g.admin_key), Method::GET, "/v1/functions");
    assert_eq!(r.status(), 200);
    let names: Vec<String> = r.json::<Value>().unwrap()["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["hello", "secret"]);
    assert_problem(via(&c, None, Method::GET, "/nowhere"), 404, "not-found");

    // A new version reaches the sidecar's answers within its scope ttl (300 ms).
    g.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}, "env": {"V": "2"}}),
    );
    let took = eventually("the sidecar serves version 2", || {
        via(&c, None, Method::GET, "/fn/hello?name=side").headers()["x-wafer-version"] == "2"
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A purge through the sidecar, likewise.
    assert_eq!(
        x_cache(&via(&c, None, Method::GET, "/fn/hello?name=side")),
        "hit"
    );
    let r = via(
        &c,
        Some(&g.admin_key),
        Method::DELETE,
        "/v1/functions/hello/cache",
    );
    assert_eq!(r.status(), 204);
    eventually("the purge reaches the sidecar", || {
        x_cache(&via(&c, None, Method::GET, "/fn/hello?name=side")) == "miss"
    });

    // The gateway gone: a clear 502, and the sidecar stays up.
    drop(g);
    let r = via(&c, None, Method::GET, "/fn/hello?name=gone");
    assert_problem(r, 502, "upstream-unavailable");
}

#[test]
fn a_sidecar_shares_the_redis_level_with_the_gateways() {
    let redis = RedisServer::start();
    let cfg = shared(&redis.url(), 2000);
    let g = TestServer::start_with_config(&cfg);
    g.deploy("hello", "hello", SPEC());
    let c = CacheSidecar::start(&g.url, &cfg, &[]);
    assert_eq!(x_cache(&get(&g, "both")), "miss");
    eventually("stored", || entries(&redis).len() == 1);
    // The sidecar's own level is empty: the answer comes from Redis, and nothing runs.
    let r = via(&c, None, Method::GET, "/fn/hello?name=both");
    assert_eq!(x_cache(&r), "hit");
    assert_eq!(r.text().unwrap(), "Hello, both!\n");
    assert_eq!(runs(&g, "hello"), 1);
}
