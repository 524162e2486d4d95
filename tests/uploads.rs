//! Uploads: ABI detection, idempotence, and every malformed or hostile upload.

use reqwest::Method;
use serde_json::Value;
use wafer_e2e::{TestServer, assert_problem, function_bytes, read_head};

#[test]
fn upload_detects_the_abi_and_is_idempotent() {
    let s = TestServer::start();
    for (file, abi) in [
        ("hello", "http"),
        ("echo", "command"),
        ("echo-p2", "command"),
    ] {
        let bytes = function_bytes(file);
        let r = s.upload(&s.admin_key, bytes.clone());
        assert_eq!(r.status(), 201, "{file}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["abi"], abi, "{file}");
        assert_eq!(v["size"], bytes.len() as u64);
        let digest = v["digest"].as_str().unwrap().to_owned();
        assert!(digest.starts_with("sha256:") && digest.len() == 71);
        let again = s.upload(&s.admin_key, bytes);
        assert_eq!(again.status(), 200, "{file} second upload");
        assert_eq!(again.json::<Value>().unwrap()["digest"], digest);
    }
}

#[test]
fn empty_upload_is_400() {
    let s = TestServer::start();
    assert_problem(s.upload(&s.admin_key, vec![]), 400, "empty-module");
    s.assert_still_serving();
}

#[test]
fn non_wasm_upload_is_422() {
    let s = TestServer::start();
    assert_problem(
        s.upload(&s.admin_key, b"#!/bin/sh\necho hi\n".to_vec()),
        422,
        "not-wasm",
    );
    s.assert_still_serving();
}

#[test]
fn truncated_module_is_422() {
    let s = TestServer::start();
    let mut bytes = function_bytes("hello");
    bytes.truncate(bytes.len() / 2);
    let v = assert_problem(s.upload(&s.admin_key, bytes), 422, "invalid-module");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("invalid WebAssembly"),
        "{v}"
    );
    let mut p1 = function_bytes("echo");
    p1.truncate(100);
    assert_problem(s.upload(&s.admin_key, p1), 422, "invalid-module");
    s.assert_still_serving();
}

#[test]
fn unknown_binary_version_is_422() {
    let s = TestServer::start();
    assert_problem(
        s.upload(&s.admin_key, b"\0asm\x02\0\0\0".to_vec()),
        422,
        "unsupported-version",
    );
}

#[test]
fn module_without_entry_point_is_unsupported_abi() {
    let s = TestServer::start();
    // The empty core module and the empty component are valid but export nothing runnable.
    let v = assert_problem(
        s.upload(&s.admin_key, b"\0asm\x01\0\0\0".to_vec()),
        422,
        "unsupported-abi",
    );
    assert!(v["detail"].as_str().unwrap().contains("_start"), "{v}");
    let v = assert_problem(
        s.upload(&s.admin_key, b"\0asm\x0d\0\x01\0".to_vec()),
        422,
        "unsupported-abi",
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("wasi:http/incoming-handler"),
        "{v}"
    );
    s.assert_still_serving();
}

#[test]
fn module_with_foreign_imports_is_422() {
    let s = TestServer::start();
    // (module (import "env" "foo" (func)) (func (export "_start")))
    let module: Vec<u8> = [
        &b"\0asm\x01\0\0\0"[..],
        &[0x01, 0x04, 0x01, 0x60, 0x00, 0x00],
        &[
            0x02, 0x0b, 0x01, 0x03, b'e', b'n', b'v', 0x03, b'f', b'o', b'o', 0x00, 0x00,
        ],
        &[0x03, 0x02, 0x01, 0x00],
        &[
            0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01,
        ],
        &[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b],
    ]
    .concat();
    let v = assert_problem(s.upload(&s.admin_key, module), 422, "unsupported-import");
    assert!(v["detail"].as_str().unwrap().contains("env::foo"), "{v}");
    s.assert_still_serving();
}

#[test]
fn wrong_media_type_is_415() {
    let s = TestServer::start();
    let r = s
        .admin(Method::PUT, "/v1/modules")
        .header("content-type", "text/plain")
        .body(function_bytes("echo"))
        .send()
        .unwrap();
    assert_problem(r, 415, "unsupported-media-type");
}

#[test]
fn oversized_upload_is_413() {
    let s = TestServer::start_with_config("max_module_bytes = 65536\n");
    let v = assert_problem(
        s.upload(&s.admin_key, function_bytes("hello")),
        413,
        "module-too-large",
    );
    assert_eq!(v["limit"], 65536);
    let r = s.upload(&s.admin_key, function_bytes("spin"));
    assert_eq!(
        r.status(),
        201,
        "a module under the limit is still accepted"
    );
}

#[test]
fn oversized_declared_length_is_refused_before_the_body_is_sent() {
    let s = TestServer::start();
    // Declare 1 GiB and send nothing: the answer must come without waiting for the body.
    let mut sock = s.raw_upload(1 << 30, b"");
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("module-too-large"), "{head}");
}

#[test]
fn uploads_need_a_deploy_key() {
    let s = TestServer::start();
    let r = s
        .anon(Method::PUT, "/v1/modules")
        .body(function_bytes("echo"))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    let r = s
        .with_key("wfr_nope", Method::PUT, "/v1/modules")
        .body(function_bytes("echo"))
        .send()
        .unwrap();
    assert_problem(r, 401, "unauthorized");
    let reader = {
        let r = s
            .admin(Method::POST, "/v1/keys")
            .json(&serde_json::json!({"tenant": "t", "scopes": ["read"]}))
            .send()
            .unwrap();
        r.json::<Value>().unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_problem(s.upload(&reader, function_bytes("echo")), 403, "forbidden");
}

#[test]
fn a_worker_that_cannot_even_start_is_a_refusal_not_a_500() {
    // 16 MiB of address space is too little for the worker to start at all.
    let s = TestServer::start_with_config("compile_memory_mb = 16\n");
    assert_problem(
        s.upload(&s.admin_key, function_bytes("hello")),
        422,
        "compile-resources",
    );
    assert_problem(
        s.upload(&s.admin_key, function_bytes("echo")),
        422,
        "compile-resources",
    );
}

#[test]
fn a_body_that_trickles_past_the_body_timeout_is_408() {
    let s = TestServer::start_with_config("body_timeout_ms = 300\n");
    let mut sock = s.raw_upload(1000, b"\0asm");
    let head = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("body-timeout"), "{head}");
    s.assert_still_serving();
}

/// A preview-1 style module: one function type `()->()` function body, `extra` sections
/// added by the caller, and `exports`.
fn core_module(build: impl FnOnce(&mut wasm_encoder::Module)) -> Vec<u8> {
    let mut m = wasm_encoder::Module::new();
    build(&mut m);
    m.finish()
}

fn func_section(m: &mut wasm_encoder::Module, params: &[wasm_encoder::ValType]) {
    use wasm_encoder::*;
    let mut types = TypeSection::new();
    types.ty().function(params.iter().copied(), []);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
}

fn code_section(m: &mut wasm_encoder::Module) {
    let mut code = wasm_encoder::CodeSection::new();
    let mut f = wasm_encoder::Function::new([]);
    f.instructions().end();
    code.function(&f);
    m.section(&code);
}

#[test]
fn exports_are_checked_by_kind_and_type_not_by_name() {
    use wasm_encoder::*;
    let s = TestServer::start();
    // `_start` as a global.
    let global_start = core_module(|m| {
        let mut globals = GlobalSection::new();
        globals.global(
            GlobalType {
                val_type: ValType::I32,
                mutable: false,
                shared: false,
            },
            &ConstExpr::i32_const(0),
        );
        m.section(&globals);
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Global, 0);
        m.section(&exports);
    });
    let v = assert_problem(s.upload(&s.admin_key, global_start), 422, "unsupported-abi");
    assert!(v["detail"].as_str().unwrap().contains("_start"), "{v}");
    // `_start` taking a parameter.
    let param_start = core_module(|m| {
        func_section(m, &[ValType::I32]);
        let mut exports = ExportSection::new();
        exports.export("_start", ExportKind::Func, 0);
        m.section(&exports);
        code_section(m);
    });
    let v = assert_problem(s.upload(&s.admin_key, param_start), 422, "unsupported-abi");
    assert!(v["detail"].as_str().unwrap().contains("_start"), "{v}");
    // A component whose `wasi:cli/run` instance has no `run`.
    let no_run = wafer_e2e::wasm::command_component_exporting("go");
    let v = assert_problem(s.upload(&s.admin_key, no_run), 422, "unsupported-abi");
    assert!(
        v["detail"].as_str().unwrap().contains("wasi:cli/run"),
        "{v}"
    );
    // The well-formed twin is accepted and runs.
    s.deploy_bytes(
        &s.admin_key,
        "twin",
        wafer_e2e::wasm::command_component_exporting("run"),
        serde_json::json!({}),
    );
    assert_eq!(s.invoke("twin", b"").status(), 200);
    s.assert_still_serving();
}

#[test]
fn modules_the_engine_cannot_hold_are_422_not_500() {
    use wasm_encoder::*;
    let s = TestServer::start();
    let with_tables = |count: u32, elements: u64| {
        core_module(|m| {
            func_section(m, &[]);
            let mut tables = TableSection::new();
            for _ in 0..count {
                tables.table(TableType {
                    element_type: RefType::FUNCREF,
                    table64: false,
                    minimum: elements,
                    maximum: None,
                    shared: false,
                });
            }
            m.section(&tables);
            let mut exports = ExportSection::new();
            exports.export("_start", ExportKind::Func, 0);
            m.section(&exports);
            code_section(m);
        })
    };
    // A table larger than a pool table slot.
    let v = assert_problem(
        s.upload(&s.admin_key, with_tables(1, 200_000)),
        422,
        "instance-limits",
    );
    assert!(v["detail"].as_str().unwrap().contains("table"), "{v}");
    // More tables in one module than the pool gives a module.
    assert_problem(
        s.upload(&s.admin_key, with_tables(5, 1)),
        422,
        "instance-limits",
    );
    // Within the limits: accepted.
    assert_eq!(s.upload(&s.admin_key, with_tables(2, 1000)).status(), 201);
    s.assert_still_serving();
}

#[test]
fn proposals_no_abi_needs_are_refused_as_invalid() {
    use wasm_encoder::*;
    let s = TestServer::start();
    let memory = |ty: MemoryType, count: u32| {
        core_module(|m| {
            func_section(m, &[]);
            let mut mems = MemorySection::new();
            for _ in 0..count {
                mems.memory(ty);
            }
            m.section(&mems);
            let mut exports = ExportSection::new();
            exports.export("_start", ExportKind::Func, 0);
            m.section(&exports);
            code_section(m);
        })
    };
    let plain = MemoryType {
        minimum: 1,
        maximum: Some(2),
        memory64: false,
        shared: false,
        page_size_log2: None,
    };
    for (what, bytes) in [
        (
            "threads (shared memory)",
            memory(
                MemoryType {
                    shared: true,
                    ..plain
                },
                1,
            ),
        ),
        (
            "memory64",
            memory(
                MemoryType {
                    memory64: true,
                    ..plain
                },
                1,
            ),
        ),
        ("multi-memory", memory(plain, 2)),
    ] {
        let v = assert_problem(s.upload(&s.admin_key, bytes), 422, "invalid-module");
        println!("{what}: {}", v["detail"]);
    }
    assert_eq!(s.upload(&s.admin_key, memory(plain, 1)).status(), 201);
    s.assert_still_serving();
}
