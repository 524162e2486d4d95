//! The response cache in the gateway: hits, misses and bypasses by rule, isolation between
//! tenants and versions, and one execution for many concurrent identical misses.

use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use wafer_e2e::{TestServer, runs, x_cache};

#[test]
fn repeated_gets_are_answered_from_the_cache_and_new_versions_never_see_old_answers() {
    let s = TestServer::start();
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}}),
    );
    let get = |q: &str| {
        s.anon(Method::GET, &format!("/fn/hello?name={q}"))
            .send()
            .unwrap()
    };
    let r = get("a");
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().unwrap(), "Hello, a!\n");
    let r = get("a");
    assert_eq!(x_cache(&r), "hit");
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.headers()["x-wafer-version"], "1");
    assert_eq!(r.text().unwrap(), "Hello, a!\n");
    assert_eq!(runs(&s, "hello"), 1, "the hit did not run the function");
    assert_eq!(
        x_cache(&get("b")),
        "miss",
        "another query is another answer"
    );
    // A new version: the old answers are never served.
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}, "env": {"V": "2"}}),
    );
    let r = get("a");
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.headers()["x-wafer-version"], "2");
    // Rules that bypass: POST without a pure declaration, no-store, credentials of its own.
    let r = s
        .anon(Method::POST, "/fn/hello?name=a")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "bypass");
    let r = s
        .anon(Method::GET, "/fn/hello?name=a")
        .header("cache-control", "no-store")
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "bypass");
    let r = s
        .anon(Method::GET, "/fn/hello?name=a")
        .header("cookie", "session=1")
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "bypass");
}

#[test]
fn tenants_never_share_an_entry_and_errors_are_never_kept() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(
        &a,
        "shared",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}}),
    );
    let call = |k: &str| {
        s.with_key(k, Method::GET, "/fn/shared?name=x")
            .send()
            .unwrap()
    };
    assert_eq!(x_cache(&call(&a)), "miss");
    assert_eq!(x_cache(&call(&a)), "hit");
    assert_eq!(
        x_cache(&call(&b)),
        "miss",
        "beta does not get alpha's entry"
    );
    assert_eq!(x_cache(&call(&b)), "hit");
    // Failures run every time.
    s.deploy_as(
        &a,
        "broken",
        "fail",
        json!({"cache": {"ttl_ms": 60000, "methods": ["POST"]}}),
    );
    for _ in 0..2 {
        let r = s
            .with_key(&a, Method::POST, "/fn/broken")
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(x_cache(&r), "miss");
    }
}

/// `n` identical POSTs of `body` to `url` at once: each answer's status, `x-cache` and body.
fn concurrently(n: usize, url: &str, body: &'static str) -> Vec<(u16, String, String)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(move || {
                    let r = reqwest::blocking::Client::new()
                        .post(url)
                        .body(body)
                        .send()
                        .unwrap();
                    let how = x_cache(&r);
                    (r.status().as_u16(), how, r.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_identical_misses_run_the_function_once() {
    let s = TestServer::start();
    s.deploy(
        "slow",
        "nap",
        json!({"public": true, "cache": {"ttl_ms": 60000, "methods": ["POST"]}}),
    );
    let answers = concurrently(50, &format!("{}/fn/slow", s.url), "400");
    assert!(
        answers
            .iter()
            .all(|(st, _, body)| *st == 200 && body == "awake\n"),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, how, _)| how == "miss").count(),
        1,
        "{answers:?}"
    );
    assert_eq!(runs(&s, "slow"), 1, "fifty callers, one execution");
}

#[test]
fn only_the_owner_purges_a_function_s_answers() {
    let s = TestServer::start();
    let owner = s.tenant_key("alpha");
    let other = s.tenant_key("beta");
    s.deploy_as(
        &owner,
        "greet",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}}),
    );
    let get = || s.anon(Method::GET, "/fn/greet?name=p").send().unwrap();
    assert_eq!(x_cache(&get()), "miss");
    assert_eq!(x_cache(&get()), "hit");
    // Only the owner may purge; another tenant gets the same 404 as for a missing function.
    let r = s
        .with_key(&other, Method::DELETE, "/v1/functions/greet/cache")
        .send()
        .unwrap();
    wafer_e2e::assert_problem(r, 404, "function-not-found");
    assert_eq!(x_cache(&get()), "hit");
    let o = s.cli_with(&["cache", "purge", "greet"], &[("WAFER_API_KEY", &owner)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(x_cache(&get()), "miss", "purged");
    assert_eq!(x_cache(&get()), "hit");
    assert_eq!(runs(&s, "greet"), 2);
}

#[test]
fn answers_are_kept_for_their_max_age_and_etags_answer_304() {
    let s = TestServer::start();
    // No cache policy: the function's own Cache-Control decides.
    s.deploy("hello", "hello", json!({"public": true}));
    let r = s.anon(Method::GET, "/fn/hello?name=x").send().unwrap();
    assert_eq!(x_cache(&r), "miss");
    let r = s.anon(Method::GET, "/fn/hello?name=x").send().unwrap();
    assert_eq!(x_cache(&r), "miss", "no max-age, no policy: not kept");
    let get = |inm: Option<&str>| {
        let mut rb = s.anon(Method::GET, "/fn/hello?name=abc&max_age=60");
        if let Some(t) = inm {
            rb = rb.header("if-none-match", t);
        }
        rb.send().unwrap()
    };
    assert_eq!(x_cache(&get(None)), "miss");
    let r = get(None);
    assert_eq!(x_cache(&r), "hit");
    assert_eq!(r.headers()["etag"], "\"3\"");
    let r = get(Some("\"3\""));
    assert_eq!(r.status(), 304);
    assert_eq!(x_cache(&r), "hit");
    assert!(r.bytes().unwrap().is_empty());
    let r = get(Some("\"other\""));
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello, abc!\n");
    // max-age=0: never kept.
    for _ in 0..2 {
        let r = s
            .anon(Method::GET, "/fn/hello?name=z&max_age=0")
            .send()
            .unwrap();
        assert_eq!(x_cache(&r), "miss");
    }
}

#[test]
fn the_cache_is_bounded_by_bytes_and_counts_what_it_evicts() {
    // Room for a few small answers only.
    let s = TestServer::start_with_config("[cache]\nmax_bytes = 2000\n");
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}}),
    );
    for i in 0..40 {
        let r = s
            .anon(Method::GET, &format!("/fn/hello?name={i}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Evictions are applied by the cache's housekeeping; lookups drive it.
        let _ = s.anon(Method::GET, "/fn/hello?name=0").send().unwrap();
        let m = s.metrics();
        if m.lines().any(|l| {
            l.starts_with("wafer_cache_evictions_total{cause=\"size\"}") && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no eviction counted:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = wafer_e2e::metric(&s.metrics(), "wafer_cache_bytes");
    assert!(held > 0 && held <= 2000, "holds {held} bytes of 2000");
}

/// Calls `get` until its answer's `x-cache` is not `hit`, for at most `within`; returns the
/// answer and how long that took.
fn until_not_hit(
    get: impl Fn() -> reqwest::blocking::Response,
    within: Duration,
) -> (reqwest::blocking::Response, Duration) {
    let start = Instant::now();
    loop {
        let r = get();
        if x_cache(&r) != "hit" {
            return (r, start.elapsed());
        }
        assert!(start.elapsed() < within, "still a hit after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_entry_expires_after_its_ttl() {
    let s = TestServer::start();
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 500}}),
    );
    let get = || s.anon(Method::GET, "/fn/hello?name=t").send().unwrap();
    let stored = Instant::now();
    assert_eq!(x_cache(&get()), "miss");
    assert_eq!(x_cache(&get()), "hit");
    let (r, _) = until_not_hit(get, Duration::from_secs(10));
    assert_eq!(
        x_cache(&r),
        "miss",
        "expired, not stale: no stale-while-revalidate"
    );
    assert!(
        stored.elapsed() >= Duration::from_millis(500),
        "expired after {:?}, before its ttl",
        stored.elapsed()
    );
    assert_eq!(runs(&s, "hello"), 2);
}

#[test]
fn a_stale_answer_is_served_while_one_caller_revalidates_it() {
    let s = TestServer::start();
    s.deploy("hello", "hello", json!({"public": true}));
    let get = || {
        s.anon(Method::GET, "/fn/hello?name=s&max_age=2&swr=60")
            .send()
            .unwrap()
    };
    assert_eq!(x_cache(&get()), "miss");
    assert_eq!(x_cache(&get()), "hit");
    let (r, _) = until_not_hit(get, Duration::from_secs(10));
    assert_eq!(x_cache(&r), "stale");
    assert!(r.headers()["age"].to_str().unwrap().parse::<u64>().unwrap() >= 2);
    assert_eq!(r.text().unwrap(), "Hello, s!\n");
    // The revalidation runs in the background, once, and its answer is fresh.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = get();
        match x_cache(&r).as_str() {
            "hit" => break r,
            "stale" => {}
            other => panic!("{other}: the stale answer must be served until revalidated"),
        }
        assert!(Instant::now() < deadline, "never revalidated");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(r.headers()["age"].to_str().unwrap().parse::<u64>().unwrap() < 2);
    assert_eq!(
        runs(&s, "hello"),
        2,
        "one revalidation for the stale answers"
    );
}

#[test]
fn vary_headers_select_separate_answers() {
    let s = TestServer::start();
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000, "vary": ["Accept-Language"]}}),
    );
    let get = |lang: Option<&str>| {
        let mut rb = s.anon(Method::GET, "/fn/hello?name=v");
        if let Some(l) = lang {
            rb = rb.header("accept-language", l);
        }
        x_cache(&rb.send().unwrap())
    };
    assert_eq!(get(Some("fr")), "miss");
    assert_eq!(get(Some("fr")), "hit");
    assert_eq!(get(Some("en")), "miss", "another language, another answer");
    assert_eq!(get(None), "miss");
    assert_eq!(get(None), "hit");
    assert_eq!(get(Some("en")), "hit");
    // A header the version does not name changes nothing.
    let r = s
        .anon(Method::GET, "/fn/hello?name=v")
        .header("accept-language", "fr")
        .header("x-unrelated", "1")
        .send()
        .unwrap();
    assert_eq!(x_cache(&r), "hit");
    assert_eq!(runs(&s, "hello"), 3);
}

#[test]
fn answers_and_requests_the_rules_refuse_are_never_kept() {
    let s = TestServer::start_with_config("[cache]\nmax_entry_bytes = 1000\n");
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000}}),
    );
    let twice = |method: Method, q: &str, auth: Option<&str>| -> Vec<String> {
        (0..2)
            .map(|_| {
                let mut rb = s.anon(method.clone(), &format!("/fn/hello?name=r&{q}"));
                if let Some(a) = auth {
                    rb = rb.header("authorization", a);
                }
                let r = rb.send().unwrap();
                assert!(r.status().is_success(), "{q}: {}", r.status());
                x_cache(&r)
            })
            .collect()
    };
    // Answers not for a shared cache, with a cookie, or over the size cap: run every time.
    for q in [
        "cache_control=private%2C%20max-age%3D60",
        "cache_control=no-cache",
        "cache_control=no-store",
        "set_cookie=1",
        "pad=2000",
    ] {
        assert_eq!(twice(Method::GET, q, None), ["miss", "miss"], "{q}");
    }
    assert_eq!(
        twice(Method::GET, "pad=500", None),
        ["miss", "hit"],
        "within the cap"
    );
    assert_eq!(
        twice(Method::HEAD, "", None),
        ["miss", "hit"],
        "HEAD is kept"
    );
    assert_eq!(twice(Method::PUT, "", None), ["bypass", "bypass"]);
    // A request with credentials of its own bypasses the cache, unless the version opts in;
    // then each credential has answers of its own.
    assert_eq!(
        twice(Method::GET, "c=1", Some("Basic eDp5")),
        ["bypass", "bypass"]
    );
    s.deploy(
        "hello",
        "hello",
        json!({"public": true, "cache": {"ttl_ms": 60000, "credentials": true}}),
    );
    assert_eq!(
        twice(Method::GET, "c=1", Some("Basic eDp5")),
        ["miss", "hit"]
    );
    assert_eq!(
        twice(Method::GET, "c=1", Some("Basic b3RoZXI=")),
        ["miss", "hit"]
    );
}

#[test]
fn a_failing_function_s_answer_is_never_handed_to_the_callers_waiting_on_it() {
    let s = TestServer::start();
    // Every run times out after a second: a failure that takes its time.
    s.deploy(
        "sleepy",
        "nap",
        json!({"public": true, "timeout_ms": 1000, "cache": {"ttl_ms": 60000, "methods": ["POST"]}}),
    );
    let answers = concurrently(4, &format!("{}/fn/sleepy", s.url), "5000");
    assert!(answers.iter().all(|(st, _, _)| *st == 504), "{answers:?}");
    assert!(
        answers.iter().all(|(_, how, _)| how == "miss"),
        "{answers:?}"
    );
    let runs: u64 = s
        .metrics()
        .lines()
        .filter(|l| l.starts_with("wafer_invocations_total{function=\"sleepy\","))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(runs, 4, "each caller ran its own request");
}

/// GET `path` anonymously with `x-user: user` (none for "-"): its `x-cache` and body.
fn as_user(s: &TestServer, path: &str, user: &str) -> (String, String) {
    let mut rb = s.anon(Method::GET, path);
    if user != "-" {
        rb = rb.header("x-user", user);
    }
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 200);
    (x_cache(&r), r.text().unwrap())
}

/// `as_user` for each of `users` at once.
fn users_at_once(s: &TestServer, path: &str, users: &[&str]) -> Vec<(String, String)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| scope.spawn(move || as_user(s, path, u)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn pair(how: &str, body: &str) -> (String, String) {
    (how.to_owned(), body.to_owned())
}

#[test]
fn a_function_s_own_vary_gives_each_caller_the_answer_for_their_headers() {
    let s = TestServer::start();
    // No cache.vary in the version: only the answer says what it varies by.
    s.deploy("hello", "hello", json!({"public": true}));
    let path = "/fn/hello?name=v&who=x-user&vary=X-User&max_age=60";
    assert_eq!(
        as_user(&s, path, "alice"),
        pair("miss", "Hello, v (alice)!\n")
    );
    assert_eq!(as_user(&s, path, "bob"), pair("miss", "Hello, v (bob)!\n"));
    assert_eq!(
        as_user(&s, path, "alice"),
        pair("hit", "Hello, v (alice)!\n")
    );
    assert_eq!(as_user(&s, path, "bob"), pair("hit", "Hello, v (bob)!\n"));
    assert_eq!(as_user(&s, path, "-"), pair("miss", "Hello, v (-)!\n"));
    assert_eq!(as_user(&s, path, "-"), pair("hit", "Hello, v (-)!\n"));
    assert_eq!(runs(&s, "hello"), 3, "one run per x-user value");
    // `Vary: *`: no stored answer can match a request, so none is kept.
    let star = "/fn/hello?name=star&who=x-user&vary=*&max_age=60";
    assert_eq!(
        as_user(&s, star, "alice"),
        pair("miss", "Hello, star (alice)!\n")
    );
    assert_eq!(
        as_user(&s, star, "alice"),
        pair("miss", "Hello, star (alice)!\n")
    );
}

#[test]
fn concurrent_first_callers_share_only_an_answer_that_is_kept_and_theirs() {
    let s = TestServer::start();
    s.deploy("hello", "hello", json!({"public": true}));
    // The first run takes a second, so the callers arrive while it runs.
    let varying = "/fn/hello?name=c&who=x-user&vary=x-user&max_age=60&sleep_ms=1000";
    let answers = users_at_once(&s, varying, &["carol", "dave", "carol"]);
    for (user, (_, body)) in ["carol", "dave", "carol"].iter().zip(&answers) {
        assert_eq!(body, &format!("Hello, c ({user})!\n"), "{answers:?}");
    }
    assert_eq!(
        runs(&s, "hello"),
        2,
        "carol's second call waited for her first"
    );
    // An answer that may not be kept (private) is nobody else's, even without a Vary: each
    // caller waiting on the flight runs their own request.
    let private = "/fn/hello?name=p&who=x-user&cache_control=private&sleep_ms=1000";
    let users = ["erin", "frank", "grace"];
    let answers = users_at_once(&s, private, &users);
    for (user, (how, body)) in users.iter().zip(&answers) {
        assert_eq!(how, "miss");
        assert_eq!(body, &format!("Hello, p ({user})!\n"), "{answers:?}");
    }
    assert_eq!(runs(&s, "hello"), 5);
}

#[test]
fn moving_an_alias_or_rolling_back_never_serves_the_other_version_s_answers() {
    let s = TestServer::start();
    let spec = |v: &str| json!({"public": true, "cache": {"ttl_ms": 60000}, "env": {"V": v}});
    s.deploy("hello", "hello", spec("1"));
    s.deploy("hello", "hello", spec("2"));
    let point = |alias: &str, version: u64| {
        let r = s
            .admin(Method::PUT, &format!("/v1/functions/hello/aliases/{alias}"))
            .json(&json!({"version": version}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let get = |target: &str| {
        let r = s
            .anon(Method::GET, &format!("/fn/{target}?name=a"))
            .send()
            .unwrap();
        (
            x_cache(&r),
            r.headers()["x-wafer-version"].to_str().unwrap().to_owned(),
        )
    };
    point("stable", 1);
    assert_eq!(get("hello@stable"), ("miss".into(), "1".into()));
    assert_eq!(get("hello@stable"), ("hit".into(), "1".into()));
    point("stable", 2);
    assert_eq!(get("hello@stable"), ("miss".into(), "2".into()));
    assert_eq!(get("hello"), ("miss".into(), "2".into()));
    assert_eq!(get("hello"), ("hit".into(), "2".into()));
    // A rollback moves `latest` back: version 1's answers, never version 2's.
    point("latest", 1);
    assert_eq!(get("hello"), ("miss".into(), "1".into()));
    assert_eq!(get("hello"), ("hit".into(), "1".into()));
}
