//! Tenants are isolated: another tenant's functions and modules do not exist for them.

use reqwest::Method;
use serde_json::{Value, json};
use wafer_e2e::{TestServer, assert_problem};

#[test]
fn another_tenants_function_is_404_for_every_operation() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "private", "echo", json!({}));

    assert_problem(
        s.with_key(&b, Method::GET, "/v1/functions/private")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.with_key(&b, Method::GET, "/v1/functions/private/versions")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.with_key(&b, Method::POST, "/fn/private")
            .body("x")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.with_key(&b, Method::DELETE, "/v1/functions/private")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
    let r = s
        .with_key(&b, Method::PUT, "/v1/functions/private/aliases/prod")
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    assert_problem(r, 404, "function-not-found");
    // Overwriting: beta uploads its own module and tries to take the name.
    let digest = s
        .upload(&b, wafer_e2e::function_bytes("stress"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    let r = s
        .with_key(&b, Method::PUT, "/v1/functions/private")
        .json(&json!({"module": digest}))
        .send()
        .unwrap();
    assert_problem(r, 404, "function-not-found");
    let list: Value = s
        .with_key(&b, Method::GET, "/v1/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["functions"], json!([]));

    // Alpha still owns it, unchanged.
    let r = s
        .with_key(&a, Method::POST, "/fn/private")
        .body("still mine")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-wafer-version"], "1");
    assert_eq!(r.text().unwrap(), "still mine");
}

#[test]
fn a_module_digest_is_not_shared_across_tenants() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    let digest = s
        .upload(&a, wafer_e2e::function_bytes("echo"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    let r = s
        .with_key(&b, Method::PUT, "/v1/functions/mine")
        .json(&json!({"module": digest}))
        .send()
        .unwrap();
    assert_problem(r, 422, "module-not-found");
    // Uploading the same bytes is new for beta (201), not "already exists".
    assert_eq!(
        s.upload(&b, wafer_e2e::function_bytes("echo")).status(),
        201
    );
}

#[test]
fn public_functions_need_no_key_and_private_ones_do() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "open", "hello", json!({"public": true}));
    s.deploy_as(&a, "closed", "hello", json!({}));
    let r = s.anon(Method::GET, "/fn/open?name=anyone").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello, anyone!\n");
    assert_eq!(
        s.with_key(&b, Method::GET, "/fn/open")
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_problem(
        s.anon(Method::GET, "/fn/closed").send().unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.with_key(&b, Method::GET, "/fn/closed").send().unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.with_key("wfr_forged", Method::GET, "/fn/open")
            .send()
            .unwrap(),
        401,
        "unauthorized",
    );
}

#[test]
fn scopes_are_enforced_and_only_admins_create_keys() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let r = s
        .with_key(&a, Method::POST, "/v1/keys")
        .json(&json!({"tenant": "alpha", "scopes": ["admin"]}))
        .send()
        .unwrap();
    assert_problem(r, 403, "forbidden");
    let deployer = s.key_with_scopes("alpha", &["deploy"]);
    s.deploy_as(&deployer, "f", "echo", json!({}));
    assert_problem(
        s.with_key(&deployer, Method::POST, "/fn/f").send().unwrap(),
        403,
        "forbidden",
    );
    assert_problem(
        s.with_key(&deployer, Method::GET, "/v1/functions")
            .send()
            .unwrap(),
        403,
        "forbidden",
    );
    // Same tenant, invoke scope: allowed.
    assert_eq!(
        s.with_key(&a, Method::POST, "/fn/f")
            .body("ok")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "ok"
    );
    let r = s
        .admin(Method::POST, "/v1/keys")
        .json(&json!({"tenant": "Bad Tenant", "scopes": ["read"]}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
    let r = s
        .admin(Method::POST, "/v1/keys")
        .json(&json!({"tenant": "t", "scopes": ["root"]}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
    let r = s
        .anon(Method::GET, "/v1/functions")
        .header("authorization", "Basic abc")
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
}

#[test]
fn keys_are_stored_only_as_hashes_and_never_logged() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    s.deploy_as(
        &a,
        "f",
        "echo",
        json!({"env": {"SECRET_TOKEN": "hunter2-value"}}),
    );
    assert_eq!(
        s.with_key(&a, Method::POST, "/fn/f")
            .body("x")
            .send()
            .unwrap()
            .status(),
        200
    );
    let db = std::fs::read(s.data_dir().join("meta.redb")).unwrap();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(&db, &a), "a raw key is in the database");
    assert!(
        !contains(&db, &s.admin_key),
        "the admin key is in the database"
    );
    let log = s.log();
    assert!(
        !log.contains(&a) && !log.contains(&s.admin_key),
        "a key is in the log"
    );
    assert!(
        !log.contains("hunter2-value"),
        "an env secret is in the log"
    );
    // Versions show env keys, never values.
    let v: Value = s
        .with_key(&a, Method::GET, "/v1/functions/f/versions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["versions"][0]["env_keys"], json!(["SECRET_TOKEN"]));
    assert!(!v.to_string().contains("hunter2-value"));
}

#[test]
fn one_tenant_at_its_concurrency_limit_does_not_block_another() {
    let s = TestServer::start_with_config("max_inflight = 8\nmax_inflight_per_tenant = 1\n");
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "slow", "nap", json!({"timeout_ms": 3000}));
    s.deploy_as(&b, "quick", "echo", json!({}));
    std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            s.with_key(&a, Method::POST, "/fn/slow")
                .send()
                .unwrap()
                .status()
                .as_u16()
        });
        assert!(s.wait_in_flight(1), "the first invocation never started");
        let r = s.with_key(&a, Method::POST, "/fn/slow").send().unwrap();
        assert_eq!(r.headers()["retry-after"], "1");
        assert_problem(r, 429, "concurrency-limit");
        let r = s
            .with_key(&b, Method::POST, "/fn/quick")
            .body("b is fine")
            .send()
            .unwrap();
        assert_eq!(r.text().unwrap(), "b is fine");
        assert_eq!(first.join().unwrap(), 504);
    });
}

/// The problem fields a prober could compare (all but the per-request `instance`).
fn problem_fields(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let mut v: Value = r.json().unwrap();
    v.as_object_mut().unwrap().remove("instance");
    (status, v)
}

#[test]
fn outsiders_get_one_404_for_private_missing_and_missing_versions() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "secret-fn", "echo", json!({}));
    s.deploy_as(&a, "open-fn", "hello", json!({"public": true}));
    for who in [None, Some(b.as_str())] {
        let get = |path: &str| {
            let req = match who {
                Some(k) => s.with_key(k, Method::POST, path),
                None => s.anon(Method::POST, path),
            };
            problem_fields(req.send().unwrap())
        };
        // The detail names the requested function only, so compare each private probe with
        // the same probe of a name that does not exist, after renaming.
        let renamed = |(status, v): (u16, Value)| {
            let text = v
                .to_string()
                .replace("secret-fn", "NAME")
                .replace("no-such-fn", "NAME");
            (status, text)
        };
        let missing = renamed(get("/fn/no-such-fn"));
        assert_eq!(missing.0, 404, "{who:?}: {}", missing.1);
        assert!(missing.1.contains("function-not-found"), "{}", missing.1);
        for probe in [
            "/fn/secret-fn",
            "/fn/secret-fn@1",
            "/fn/secret-fn@9",
            "/fn/secret-fn@prod",
        ] {
            assert_eq!(renamed(get(probe)), missing, "{who:?} {probe}");
        }
        for probe in ["/fn/no-such-fn@9", "/fn/no-such-fn@prod"] {
            assert_eq!(renamed(get(probe)), missing, "{who:?} {probe}");
        }
    }
    // The owner is told precisely.
    assert_problem(
        s.with_key(&a, Method::POST, "/fn/secret-fn@9")
            .send()
            .unwrap(),
        404,
        "version-not-found",
    );
    // A public function is public; its missing versions may say so.
    assert_eq!(
        s.anon(Method::GET, "/fn/open-fn").send().unwrap().status(),
        200
    );
}

#[test]
fn metrics_need_a_key_with_the_metrics_scope() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    s.deploy_as(&a, "counted", "hello", json!({"public": true}));
    assert_eq!(
        s.anon(Method::GET, "/fn/counted").send().unwrap().status(),
        200
    );
    assert_problem(
        s.anon(Method::GET, "/metrics").send().unwrap(),
        401,
        "unauthorized",
    );
    assert_problem(
        s.with_key(&a, Method::GET, "/metrics").send().unwrap(),
        403,
        "forbidden",
    );
    let r = s
        .admin(Method::POST, "/v1/keys")
        .json(&json!({"tenant": "ops", "scopes": ["metrics"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let scraper = r.json::<Value>().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = s
        .with_key(&scraper, Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains(r#"function="counted""#), "{text}");
    // The scraper can read metrics and nothing else.
    assert_problem(
        s.with_key(&scraper, Method::GET, "/v1/functions")
            .send()
            .unwrap(),
        403,
        "forbidden",
    );
}

#[test]
fn a_failed_commands_stderr_is_shown_only_to_its_owner() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "leaky", "fail", json!({"public": true}));
    for req in [
        s.anon(Method::POST, "/fn/leaky"),
        s.with_key(&b, Method::POST, "/fn/leaky"),
    ] {
        let v = assert_problem(req.body("token-123").send().unwrap(), 502, "nonzero-exit");
        assert_eq!(v["exit_code"], 3);
        assert!(v.get("stderr").is_none(), "{v}");
        assert!(!v.to_string().contains("token-123"), "{v}");
    }
    let v = assert_problem(
        s.with_key(&a, Method::POST, "/fn/leaky")
            .body("token-123")
            .send()
            .unwrap(),
        502,
        "nonzero-exit",
    );
    assert!(v["stderr"].as_str().unwrap().contains("token-123"), "{v}");
}

#[test]
fn what_a_trapping_function_wrote_to_stderr_is_kept_for_its_owner_only() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    s.deploy_as(&a, "panicky", "fail", json!({"public": true}));
    // A Rust panic: the message on stderr, then an `unreachable` trap.
    for req in [
        s.anon(Method::POST, "/fn/panicky"),
        s.with_key(&b, Method::POST, "/fn/panicky"),
    ] {
        let v = assert_problem(req.body("panic").send().unwrap(), 502, "unreachable");
        assert!(v.get("stderr").is_none(), "{v}");
        assert!(!v.to_string().contains("deliberate"), "{v}");
    }
    let v = assert_problem(
        s.with_key(&a, Method::POST, "/fn/panicky")
            .body("panic")
            .send()
            .unwrap(),
        502,
        "unreachable",
    );
    assert!(
        v["stderr"].as_str().unwrap().contains("a deliberate panic"),
        "{v}"
    );
    let logs: Value = s
        .with_key(&a, Method::GET, "/v1/functions/panicky/logs")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let list = logs["logs"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for entry in list {
        assert_eq!(entry["outcome"], "unreachable");
        assert!(
            entry["log"]
                .as_str()
                .unwrap()
                .contains("a deliberate panic"),
            "every run's log is its owner's: {logs}"
        );
    }
}

#[test]
fn logs_start_empty_when_a_name_is_deleted_and_created_again() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    s.deploy_as(&a, "reused", "fail", json!({}));
    assert_problem(
        s.with_key(&a, Method::POST, "/fn/reused")
            .body("old-secret")
            .send()
            .unwrap(),
        502,
        "nonzero-exit",
    );
    let logs = |k: &str| -> Value {
        s.with_key(k, Method::GET, "/v1/functions/reused/logs")
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert!(logs(&a).to_string().contains("old-secret"));
    let r = s
        .with_key(&a, Method::DELETE, "/v1/functions/reused")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let b = s.tenant_key("beta");
    s.deploy_as(&b, "reused", "echo", json!({}));
    assert_eq!(logs(&b)["logs"], json!([]));
}

#[test]
fn the_callers_credentials_never_reach_the_function() {
    let s = TestServer::start();
    let a = s.tenant_key("alpha");
    s.deploy_as(&a, "peek", "inspect", json!({"public": true}));
    for req in [
        s.with_key(&a, Method::GET, "/fn/peek"),
        s.anon(Method::GET, "/fn/peek")
            .header("authorization", "Basic dXNlcjpwdw=="),
        s.anon(Method::GET, "/fn/peek")
            .header("proxy-authorization", "Basic eDp5"),
    ] {
        let r = req.header("x-kept", "yes").send().unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().unwrap();
        let headers = v["headers"].as_object().unwrap();
        assert_eq!(headers["x-kept"], "yes", "{v}");
        assert!(!headers.contains_key("authorization"), "{v}");
        assert!(!headers.contains_key("proxy-authorization"), "{v}");
    }
}

#[test]
fn deployers_cannot_set_the_variables_wafer_sets() {
    let s = TestServer::start();
    let digest = s
        .upload(&s.admin_key, wafer_e2e::function_bytes("echo"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    for var in ["WAFER_PATH", "WAFER_METHOD", "WAFER_ANYTHING"] {
        let r = s
            .admin(Method::PUT, "/v1/functions/envy")
            .json(&json!({"module": digest, "env": {var: "/forged"}}))
            .send()
            .unwrap();
        let v = assert_problem(r, 400, "invalid-config");
        assert!(v["detail"].as_str().unwrap().contains(var), "{v}");
    }
}

#[test]
fn keys_can_be_listed_and_revoked_from_the_cli() {
    let s = TestServer::start();
    let key = s.tenant_key("alpha");
    s.deploy_as(&key, "mine", "echo", json!({}));
    let o = s.cli(&["keys", "ls", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!list.to_string().contains(&key), "a secret is listed");
    let alpha: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["tenant"] == "alpha")
        .collect();
    assert_eq!(alpha.len(), 1, "{list}");
    let id = alpha[0]["id"].as_str().unwrap();
    let table = String::from_utf8(s.cli(&["keys", "ls"]).stdout).unwrap();
    assert!(table.contains(id) && table.contains("alpha"), "{table}");
    let o = s.cli(&["keys", "revoke", id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_problem(
        s.with_key(&key, Method::GET, "/v1/functions")
            .send()
            .unwrap(),
        401,
        "unauthorized",
    );
    let o = s.cli(&["keys", "revoke", id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("(404)"));
}
