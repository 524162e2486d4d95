//! Storage: per-tenant quotas, garbage collection of what no version uses, and a private
//! data directory.

use reqwest::Method;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use wafer_e2e::{TestServer, assert_problem, function_bytes};

#[test]
fn quotas_refuse_uploads_and_deploys_past_them() {
    let s = TestServer::start_with_config(
        "[quotas]\nmodules = 2\nfunctions = 1\nversions_per_function = 2\n",
    );
    let a = s.tenant_key("alpha");
    let b = s.tenant_key("beta");
    assert_eq!(s.upload(&a, function_bytes("echo")).status(), 201);
    assert_eq!(s.upload(&a, function_bytes("hello")).status(), 201);
    let v = assert_problem(
        s.upload(&a, function_bytes("stress")),
        422,
        "quota-exceeded",
    );
    assert_eq!(
        (v["quota"].as_str(), v["limit"].as_u64()),
        (Some("modules"), Some(2))
    );
    // A module the tenant already has is not a new one.
    assert_eq!(s.upload(&a, function_bytes("echo")).status(), 200);
    s.deploy_as(&a, "f", "echo", json!({}));
    s.deploy_as(&a, "f", "hello", json!({}));
    let digest = s
        .upload(&a, function_bytes("echo"))
        .json::<Value>()
        .unwrap()["digest"]
        .clone();
    let r = s
        .with_key(&a, Method::PUT, "/v1/functions/f")
        .json(&json!({"module": digest}))
        .send()
        .unwrap();
    let v = assert_problem(r, 422, "quota-exceeded");
    assert_eq!(v["quota"], "versions of this function");
    let r = s
        .with_key(&a, Method::PUT, "/v1/functions/g")
        .json(&json!({"module": digest}))
        .send()
        .unwrap();
    let v = assert_problem(r, 422, "quota-exceeded");
    assert_eq!(v["quota"], "functions");
    // Another tenant has its own quota.
    s.deploy_as(&b, "g", "stress", json!({}));

    let echo = function_bytes("echo").len();
    let s = TestServer::start_with_config(&format!("[quotas]\nmodule_bytes = {}\n", echo + 10));
    assert_eq!(s.upload(&s.admin_key, function_bytes("echo")).status(), 201);
    let v = assert_problem(
        s.upload(&s.admin_key, function_bytes("hello")),
        422,
        "quota-exceeded",
    );
    assert_eq!(v["quota"], "bytes of modules");
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn hex_of(file: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(function_bytes(file)))
}

#[test]
fn what_no_version_uses_is_collected_and_what_one_uses_is_kept() {
    let s = TestServer::start_with_config("gc_grace_s = 0\ngc_interval_s = 0\n");
    let a = s.tenant_key("alpha");
    assert_eq!(s.upload(&a, function_bytes("stress")).status(), 201);
    s.deploy_as(&a, "kept", "echo", json!({}));
    s.deploy_as(&a, "gone", "hello", json!({}));
    assert_eq!(
        s.with_key(&a, Method::DELETE, "/v1/functions/gone")
            .send()
            .unwrap()
            .status(),
        204
    );
    // Code of an engine this server is not: left by an upgrade.
    let artifacts = s.data_dir().join("artifacts");
    let stale = artifacts.join("compiled/0123456789abcdef01234567");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(format!("{}.cwasm", hex_of("echo"))), b"old").unwrap();

    assert_problem(
        s.with_key(&a, Method::POST, "/v1/admin/gc").send().unwrap(),
        403,
        "forbidden",
    );
    let report: Value = s
        .admin(Method::POST, "/v1/admin/gc")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        report,
        json!({"module_records": 2, "modules": 2, "compiled": 3})
    );
    let left = files(&artifacts);
    let echo = hex_of("echo");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|f| f.contains(&echo)), "{left:?}");
    assert_eq!(
        s.with_key(&a, Method::POST, "/fn/kept")
            .body("x")
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "x"
    );
    // A collected module is simply new again.
    assert_eq!(s.upload(&a, function_bytes("hello")).status(), 201);
    s.deploy_as(&a, "back", "hello", json!({}));
    assert_eq!(
        s.with_key(&a, Method::GET, "/fn/back")
            .send()
            .unwrap()
            .status(),
        200
    );
    let again: Value = s
        .admin(Method::POST, "/v1/admin/gc")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        again,
        json!({"module_records": 0, "modules": 0, "compiled": 0})
    );
}

#[test]
fn fresh_uploads_are_kept_through_the_grace_period() {
    let s = TestServer::start();
    assert_eq!(
        s.upload(&s.admin_key, function_bytes("stress")).status(),
        201
    );
    let report: Value = s
        .admin(Method::POST, "/v1/admin/gc")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        report,
        json!({"module_records": 0, "modules": 0, "compiled": 0})
    );
    assert_eq!(
        s.upload(&s.admin_key, function_bytes("stress")).status(),
        200
    );
}

#[test]
fn the_data_directory_is_private() {
    let s = TestServer::start();
    let mode = std::fs::metadata(s.data_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
