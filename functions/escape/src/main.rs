//! `escape`: tries to reach outside its sandbox and reports what it saw as JSON:
//! `{"files":{"<path>":"denied: <error>" | "read N bytes" | "read N entries"},"env":{...}}`.
//! Tests expect every path denied and only the configured environment.

use std::collections::BTreeMap;
use std::fs;

use serde_json::json;

const FILES: [&str; 3] = ["/etc/passwd", "../Cargo.toml", "/proc/self/environ"];
const DIRS: [&str; 2] = ["/", "."];

fn main() {
    let mut files = BTreeMap::new();
    for path in FILES {
        let outcome = match fs::read(path) {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(error) => format!("denied: {error}"),
        };
        files.insert(path, outcome);
    }
    for path in DIRS {
        let outcome = match fs::read_dir(path) {
            Ok(entries) => format!("read {} entries", entries.count()),
            Err(error) => format!("denied: {error}"),
        };
        files.insert(path, outcome);
    }
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(key, value)| {
            (
                key.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .collect();
    println!("{}", json!({ "files": files, "env": env }));
}
