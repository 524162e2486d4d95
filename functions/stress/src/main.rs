//! `stress`: mechanical stress from force and cross-section, `{"force":1000,"section":10}` →
//! `{"stress":100.0}`. A zero section is an error (exit 1).

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Load {
    force: f64,
    section: f64,
}

#[derive(Serialize)]
struct Stress {
    stress: f64,
}

fn main() {
    wafer_sdk::command::run_json(|load: Load| {
        if load.section == 0.0 {
            return Err("section must not be zero".to_owned());
        }
        Ok(Stress {
            stress: load.force / load.section,
        })
    });
}
