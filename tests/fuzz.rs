//! Bounded fuzzing of uploads: generated modules (wasm-smith, half of them shaped as WASI
//! commands so they also run) and mutations of real modules and components. Every upload is
//! answered 2xx or 4xx, never 5xx; every accepted command is deployed and invoked, and never
//! answers 500; the server stays up. The seed is printed and can be set with `WAFER_FUZZ_SEED`.

use rand::{Rng, RngCore, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wafer_e2e::{TestServer, function_bytes};

/// Cases generated in all; the run also stops at `BUDGET`.
const CASES: usize = 1200;
const BUDGET: Duration = Duration::from_secs(90);

/// A module whose only export is `_start: func()`, as the shape generated commands must have.
fn command_shape() -> Vec<u8> {
    wafer_e2e::wasm::start_module(0, |_| {})
}

fn generated(rng: &mut rand::rngs::StdRng, as_command: bool) -> Vec<u8> {
    let mut seed = vec![0u8; rng.random_range(64..8192)];
    rng.fill_bytes(&mut seed);
    let mut u = arbitrary::Unstructured::new(&seed);
    let mut config: wasm_smith::Config = u.arbitrary().unwrap_or_default();
    if as_command {
        // Valid for this engine, so that these reach compilation, instantiation and a run.
        config.max_imports = 0;
        config.exports = Some(command_shape());
        config.exceptions_enabled = false;
        config.gc_enabled = false;
        config.custom_descriptors_enabled = false;
        config.custom_page_sizes_enabled = false;
        config.memory64_enabled = false;
        config.shared_everything_threads_enabled = false;
        config.threads_enabled = false;
        config.wide_arithmetic_enabled = false;
        config.max_memories = config.max_memories.min(1);
        config.max_tables = config.max_tables.min(4);
    }
    wasm_smith::Module::new(config, &mut u)
        .map(|m| m.to_bytes())
        .unwrap_or_else(|_| b"\0asm\x01\0\0\0".to_vec())
}

fn mutated(rng: &mut rand::rngs::StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.random_range(0..seeds.len())].clone();
    match rng.random_range(0..4) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(8..b.len());
                b[i] = rng.random();
            }
        }
        1 => b.truncate(rng.random_range(8..b.len())),
        2 => {
            let at = rng.random_range(8..b.len());
            let len = rng.random_range(1..=64.min(b.len() - at));
            let chunk = b[at..at + len].to_vec();
            let to = rng.random_range(8..b.len());
            b.splice(to..to, chunk);
        }
        _ => {
            // An oversized LEB128 where a section length or count was.
            let at = rng.random_range(8..b.len() - 5);
            b.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
    }
    b
}

#[test]
fn generated_and_mutated_uploads_are_never_a_server_error() {
    let seed: u64 = std::env::var("WAFER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("WAFER_FUZZ_SEED={seed}");
    let s = TestServer::start_with_config("max_compiles = 2\n");
    let seeds: Vec<Vec<u8>> = ["echo", "hello", "inspect", "echo-p2", "stress"]
        .into_iter()
        .map(function_bytes)
        .collect();
    let started = Instant::now();
    let outcomes: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let failures: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let (s, seeds, outcomes, failures) = (&s, &seeds, &outcomes, &failures);
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ worker);
                for case in (worker as usize..CASES).step_by(2) {
                    if started.elapsed() > BUDGET {
                        break;
                    }
                    let bytes = match case % 4 {
                        0 => generated(&mut rng, true),
                        1 => generated(&mut rng, false),
                        _ => mutated(&mut rng, seeds),
                    };
                    let t = Instant::now();
                    if std::env::var("WAFER_FUZZ_TRACE").is_ok() {
                        eprintln!("case {case}: {} bytes", bytes.len());
                        std::fs::write(format!("/tmp/fuzz-{case}.wasm"), &bytes).unwrap();
                    }
                    let r = s.upload(&s.admin_key, bytes.clone());
                    if std::env::var("WAFER_FUZZ_TRACE").is_ok() {
                        eprintln!("case {case}: upload {} in {:?}", r.status(), t.elapsed());
                    }
                    let status = r.status().as_u16();
                    let body: Value = r.json().unwrap_or(Value::Null);
                    let slug = body["type"].as_str().unwrap_or("ok").rsplit('/').next().unwrap();
                    *outcomes.lock().unwrap().entry(format!("{status} {slug}")).or_default() += 1;
                    if status >= 500 {
                        failures.lock().unwrap().push(format!("case {case}: upload {status} {body}"));
                        continue;
                    }
                    if !(200..300).contains(&status) || body["abi"] != "command" {
                        continue;
                    }
                    let name = format!("fuzz-{case}");
                    let r = s
                        .admin(Method::PUT, &format!("/v1/functions/{name}"))
                        .json(&json!({"module": body["digest"], "timeout_ms": 1000, "fuel": 100_000_000}))
                        .send()
                        .unwrap();
                    if r.status().as_u16() >= 500 {
                        failures.lock().unwrap().push(format!("case {case}: version {}", r.status()));
                        continue;
                    }
                    if r.status() != 201 {
                        continue;
                    }
                    let r = s.invoke(&name, b"input");
                    let status = r.status().as_u16();
                    *outcomes.lock().unwrap().entry(format!("run {status}")).or_default() += 1;
                    if status == 500 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("case {case}: invoke 500 {}", r.text().unwrap_or_default()));
                    }
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let uploads: usize = outcomes
        .iter()
        .filter(|(k, _)| !k.starts_with("run"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "{uploads} uploads in {:?}: {outcomes:#?}",
        started.elapsed()
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    s.assert_still_serving();
}
