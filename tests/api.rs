//! The HTTP API end to end: deploy, invoke both ABIs, versions, aliases, health, metrics.

use reqwest::Method;
use serde_json::{Value, json};
use wafer_e2e::{TestServer, assert_problem, function_bytes};

#[test]
fn hello_http_component_answers_with_version_and_request_id() {
    let s = TestServer::start();
    assert_eq!(s.deploy("hello", "hello", json!({})), 1);
    let r = s
        .anon(Method::GET, "/fn/hello?name=Ada")
        .bearer_auth(&s.admin_key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wafer-version"], "1");
    assert!(!r.headers()["x-request-id"].is_empty());
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().unwrap(), "Hello, Ada!\n");
    let r = s.admin(Method::GET, "/fn/hello/some/path").send().unwrap();
    assert_eq!(r.text().unwrap(), "Hello, world!\n");
}

#[test]
fn echo_command_round_trips_binary_bodies_for_preview1_and_preview2() {
    let s = TestServer::start();
    s.deploy("echo", "echo", json!({}));
    s.deploy("echo2", "echo-p2", json!({}));
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    for name in ["echo", "echo2"] {
        let r = s.invoke(name, &body);
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.bytes().unwrap().as_ref(), &body[..], "{name}");
    }
}

#[test]
fn stress_computes_json_in_json_out() {
    let s = TestServer::start();
    s.deploy("stress", "stress", json!({}));
    let r = s.invoke("stress", br#"{"force":1000,"section":10}"#);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().unwrap();
    assert_eq!(v, json!({"stress": 100.0}));
    let r = s.invoke("stress", br#"{"force":3,"section":4}"#);
    assert_eq!(r.json::<Value>().unwrap(), json!({"stress": 0.75}));
}

#[test]
fn versions_are_immutable_and_aliases_move() {
    let s = TestServer::start();
    assert_eq!(s.deploy("svc", "echo", json!({})), 1);
    assert_eq!(s.deploy("svc", "stress", json!({})), 2);
    // latest is v2 (stress), v1 is still echo.
    let r = s.invoke("svc", br#"{"force":1,"section":1}"#);
    assert_eq!(r.headers()["x-wafer-version"], "2");
    assert_eq!(s.invoke("svc@1", b"same").text().unwrap(), "same");
    let r = s
        .admin(Method::PUT, "/v1/functions/svc/aliases/prod")
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["aliases"]["prod"], 1);
    assert_eq!(s.invoke("svc@prod", b"p").text().unwrap(), "p");
    // Rollback: latest back to 1.
    s.admin(Method::PUT, "/v1/functions/svc/aliases/latest")
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    let r = s.invoke("svc", b"x");
    assert_eq!(r.headers()["x-wafer-version"], "1");
    let v: Value = s
        .admin(Method::GET, "/v1/functions/svc/versions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let versions: Vec<u64> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    let f: Value = s
        .admin(Method::GET, "/v1/functions/svc")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(f["latest_version"], 2);
    assert_eq!(f["current"]["version"], 1);
    let list: Value = s
        .admin(Method::GET, "/v1/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["functions"].as_array().unwrap().len(), 1);
}

#[test]
fn unknown_functions_versions_and_aliases_are_404() {
    let s = TestServer::start();
    s.deploy("svc", "echo", json!({}));
    assert_problem(s.invoke("nope", b""), 404, "function-not-found");
    assert_problem(s.invoke("svc@7", b""), 404, "version-not-found");
    assert_problem(s.invoke("svc@canary", b""), 404, "version-not-found");
    let r = s
        .admin(Method::PUT, "/v1/functions/svc/aliases/prod")
        .json(&json!({"version": 9}))
        .send()
        .unwrap();
    assert_problem(r, 404, "version-not-found");
    assert_problem(
        s.admin(Method::GET, "/v1/functions/nope").send().unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.admin(Method::DELETE, "/v1/functions/nope")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
    assert_problem(
        s.admin(Method::GET, "/v2/whatever").send().unwrap(),
        404,
        "not-found",
    );
}

#[test]
fn names_are_validated() {
    let s = TestServer::start();
    let digest = s
        .upload(&s.admin_key, function_bytes("echo"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    for bad in ["Bad", "-x", "a_b", &"a".repeat(64)] {
        let r = s
            .admin(Method::PUT, &format!("/v1/functions/{bad}"))
            .json(&json!({"module": digest}))
            .send()
            .unwrap();
        assert_problem(r, 400, "invalid-name");
    }
    assert_problem(s.invoke("UPPER", b""), 400, "invalid-name");
    assert_problem(s.invoke("ok@", b""), 400, "invalid-name");
    s.assert_still_serving();
}

#[test]
fn malformed_function_specs_are_rejected_precisely() {
    let s = TestServer::start();
    let digest = s
        .upload(&s.admin_key, function_bytes("echo"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    let put = |body: Value| {
        s.admin(Method::PUT, "/v1/functions/f")
            .json(&body)
            .send()
            .unwrap()
    };
    assert_problem(put(json!({"module": "sha256:zz"})), 400, "invalid-config");
    assert_problem(
        put(json!({"module": digest, "timeout_ms": 0})),
        400,
        "invalid-config",
    );
    assert_problem(
        put(json!({"module": digest, "memory_mb": 100000})),
        400,
        "invalid-config",
    );
    assert_problem(
        put(json!({"module": digest, "env": {"BAD-KEY": "x"}})),
        400,
        "invalid-config",
    );
    assert_problem(
        put(json!({"module": digest, "surprise": 1})),
        400,
        "invalid-json",
    );
    let missing = format!("sha256:{}", "0".repeat(64));
    assert_problem(put(json!({"module": missing})), 422, "module-not-found");
    let r = s
        .admin(Method::PUT, "/v1/functions/f")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
    s.assert_still_serving();
}

#[test]
fn delete_removes_a_function() {
    let s = TestServer::start();
    s.deploy("gone", "echo", json!({}));
    let r = s
        .admin(Method::DELETE, "/v1/functions/gone")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_problem(s.invoke("gone", b""), 404, "function-not-found");
    // The name can be used again, starting at version 1.
    assert_eq!(s.deploy("gone", "echo", json!({})), 1);
}

#[test]
fn health_readiness_openapi_and_metrics() {
    let s = TestServer::start();
    assert_eq!(
        s.anon(Method::GET, "/healthz")
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["status"],
        "ok"
    );
    assert_eq!(
        s.anon(Method::GET, "/readyz")
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["status"],
        "ready"
    );
    let doc: Value = s
        .anon(Method::GET, "/openapi.json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/modules",
        "/v1/functions",
        "/v1/functions/{name}",
        "/v1/functions/{name}/versions",
        "/v1/functions/{name}/logs",
        "/v1/functions/{name}/aliases/{alias}",
        "/v1/keys",
        "/fn/{target}",
        "/fn/{target}/{path}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} documented");
    }
    s.deploy("hello", "hello", json!({}));
    s.deploy("spin", "spin", json!({"fuel": 1000}));
    assert_eq!(
        s.admin(Method::GET, "/fn/hello").send().unwrap().status(),
        200
    );
    assert_eq!(
        s.admin(Method::GET, "/fn/hello").send().unwrap().status(),
        200
    );
    assert_eq!(s.invoke("spin", b"").status(), 502);
    let text = s.metrics();
    assert!(
        text.contains(r#"wafer_invocations_total{function="hello",outcome="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wafer_invocations_total{function="spin",outcome="fuel-exhausted"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wafer_invocation_duration_seconds_count{function="hello"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wafer_fuel_consumed_total{function="hello"}"#),
        "{text}"
    );
}

#[test]
fn http_functions_see_the_whole_request_but_not_the_callers_key() {
    let s = TestServer::start();
    s.deploy("inspect", "inspect", json!({"public": true}));
    let r = s
        .admin(Method::POST, "/fn/inspect/a/b?x=1&y=two")
        .header("x-custom", "value")
        .body("12345")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-inspected"], "yes");
    assert_eq!(r.headers()["x-wafer-version"], "1");
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v: Value = r.json().unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b?x=1&y=two");
    assert_eq!(v["body_len"], 5);
    assert_eq!(v["headers"]["x-custom"], "value");
    assert_eq!(v["headers"]["x-request-id"], request_id.as_str());
    assert!(
        v["headers"].get("authorization").is_none(),
        "the Wafer key reached the function: {v}"
    );
    // Credentials of any kind are for Wafer, never passed on (see tenancy.rs).
    let v: Value = s
        .anon(Method::GET, "/fn/inspect")
        .header("authorization", "Basic dXNlcjpwdw==")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert_eq!(v["path"], "/");

    // What the function printed is kept as the invocation's log.
    let logs: Value = s
        .admin(Method::GET, "/v1/functions/inspect/logs")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let first = &logs["logs"][0];
    assert_eq!(first["request_id"], request_id.as_str());
    assert_eq!(first["outcome"], "ok");
    assert!(
        first["log"]
            .as_str()
            .unwrap()
            .contains("inspect saw POST /a/b?x=1&y=two"),
        "{logs}"
    );
}

#[test]
fn a_failed_commands_stderr_is_in_its_logs() {
    let s = TestServer::start();
    s.deploy("fail", "fail", json!({}));
    assert_problem(s.invoke("fail", b"first"), 502, "nonzero-exit");
    assert_problem(s.invoke("fail", b"second"), 502, "nonzero-exit");
    let logs: Value = s
        .admin(Method::GET, "/v1/functions/fail/logs")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let list = logs["logs"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["outcome"], "nonzero-exit");
    assert!(
        list[1]["log"]
            .as_str()
            .unwrap()
            .contains("something went wrong: second"),
        "{logs}"
    );
    let other = s.tenant_key("other");
    assert_problem(
        s.with_key(&other, Method::GET, "/v1/functions/fail/logs")
            .send()
            .unwrap(),
        404,
        "function-not-found",
    );
}

/// A compile limit that fits the Python component on a loaded 2-core machine.
const PYTHON_COMPILE: &str = "compile_timeout_ms = 90000\n";

#[test]
fn python_components_instantiate_and_are_denied_at_the_call() {
    // Built by componentize-py: imports much of wasi:cli, wasi:filesystem and wasi:sockets.
    // Its 18 MB take about 23 s of CPU to compile: more than the default limit allows on two
    // cores shared with the rest of the suite.
    let s = TestServer::start_with_config(PYTHON_COMPILE);
    s.deploy("py", "pyhello", json!({"env": {"ONLY": "this"}}));
    let r = s.admin(Method::GET, "/fn/py/some/where").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello from Python at /some/where\n");
    let v: Value = s
        .admin(Method::GET, "/fn/py/escape")
        .send()
        .unwrap()
        .json()
        .unwrap();
    for (path, result) in v["files"].as_object().unwrap() {
        assert!(
            result.as_str().unwrap().starts_with("denied"),
            "{path}: {result}"
        );
    }
    assert_eq!(v["env"], json!({"ONLY": "this"}));
}

#[test]
fn the_server_agrees_with_its_document_on_edge_cases() {
    let s = TestServer::start();
    s.deploy("hello", "hello", json!({"public": true}));
    let r = s
        .admin(Method::PUT, "/v1/functions/hello/aliases/stable")
        .json(&json!({"version": 1.0}))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "an integral number written as 1.0 is an integer"
    );
    // `encodeURIComponent("hello@stable")`.
    let r = s
        .anon(Method::GET, "/fn/hello%40stable?name=enc")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello, enc!\n");
    // Digits alone are a version, never an alias.
    let r = s
        .admin(Method::PUT, "/v1/functions/hello/aliases/123")
        .json(&json!({"version": 1}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-name");
    assert_problem(
        s.anon(Method::GET, "/fn/hello@01").send().unwrap(),
        400,
        "invalid-name",
    );
    // Methods outside the document are refused with the ones that are allowed. (CONNECT
    // never reaches routing: its request target is an authority, refused by the HTTP layer.)
    for m in ["TRACE", "QUERY", "PROPFIND"] {
        let r = s
            .anon(Method::from_bytes(m.as_bytes()).unwrap(), "/fn/hello")
            .send()
            .unwrap();
        assert_eq!(
            r.headers()["allow"],
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
            "{m}"
        );
        assert_problem(r, 405, "method-not-allowed");
    }
    // Duplicate scopes, unknown fields: refused as the document says.
    let r = s
        .admin(Method::POST, "/v1/keys")
        .json(&json!({"tenant": "t", "scopes": ["read", "read"]}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
    let r = s
        .admin(Method::PUT, "/v1/functions/hello/aliases/x")
        .json(&json!({"version": 1, "extra": true}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
}

#[test]
fn a_version_keeps_its_cache_policy_in_canonical_form_and_bad_ones_are_refused() {
    let s = TestServer::start();
    s.deploy(
        "lookup",
        "echo",
        json!({"cache": {"ttl_ms": 60000, "methods": ["post", "GET"], "vary": ["Accept-Language", "accept"]}}),
    );
    let v: Value = s
        .admin(Method::GET, "/v1/functions/lookup/versions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let cache = &v["versions"][0]["cache"];
    assert_eq!(
        cache,
        &json!({"ttl_ms": 60000, "methods": ["POST"], "vary": ["accept", "accept-language"], "credentials": false}),
        "{v}"
    );
    let digest = v["versions"][0]["module"].clone();
    for bad in [
        json!({"methods": ["POST"]}),
        json!({"ttl_ms": 0}),
        json!({"methods": ["DELETE"], "ttl_ms": 5}),
        json!({"vary": ["not a header"]}),
    ] {
        let r = s
            .admin(Method::PUT, "/v1/functions/lookup")
            .json(&json!({"module": digest, "cache": bad}))
            .send()
            .unwrap();
        assert_problem(r, 400, "invalid-config");
    }
    let r = s
        .admin(Method::PUT, "/v1/functions/lookup")
        .json(&json!({"module": digest, "cache": {"size": 1}}))
        .send()
        .unwrap();
    assert_problem(r, 400, "invalid-json");
}
