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
        401,
        "unauthorized",
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
    let deployer = {
        let r = s
            .admin(Method::POST, "/v1/keys")
            .json(&json!({"tenant": "alpha", "scopes": ["deploy"]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
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
        assert_problem(r, 503, "overloaded");
        let r = s
            .with_key(&b, Method::POST, "/fn/quick")
            .body("b is fine")
            .send()
            .unwrap();
        assert_eq!(r.text().unwrap(), "b is fine");
        assert_eq!(first.join().unwrap(), 504);
    });
}
