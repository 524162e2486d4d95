//! The wasmtime [`Engine`]: pooling allocator, fuel, epochs and the stack bound.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::time::Duration;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// Bytes of each table slot kept resident between invocations.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Engine-wide settings: the ceilings that any one function's limits must fit under.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Largest linear memory any function may be given, in MiB (the pool's slot size).
    pub max_memory_mb: u64,
    /// How many instances may run at once (pool size).
    pub max_instances: u32,
    /// Maximum wasm stack, in bytes.
    pub max_wasm_stack: usize,
    /// Epoch tick: how often running guests yield and check their deadline.
    pub epoch_tick_ms: u64,
    /// Use the pooling allocator (instantiation in microseconds); off only for tools.
    pub pooling: bool,
    /// Bytes of each linear memory kept resident between invocations and reset in place
    /// (only dirty pages, found with PAGEMAP_SCAN where the kernel has it) instead of being
    /// returned with `madvise`, which costs page faults and cross-core TLB shootdowns.
    pub keep_resident_bytes: usize,
    /// Core instances one component may create; the pool holds this many per slot.
    pub max_core_instances_per_component: u32,
    /// Linear memories one component may define; the pool holds this many per slot.
    pub max_memories_per_component: u32,
    /// Tables one component may define; the pool holds this many per slot.
    pub max_tables_per_component: u32,
    /// Threads that run guests, apart from the threads that serve the API (0: one per core).
    pub guest_threads: usize,
    /// Nice value (0–19) of the guest threads: higher lets the control plane win a core.
    pub guest_nice: i32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_memory_mb: 512,
            max_instances: 128,
            max_wasm_stack: 512 * 1024,
            epoch_tick_ms: 5,
            pooling: true,
            keep_resident_bytes: 4 << 20,
            max_core_instances_per_component: 20,
            max_memories_per_component: 4,
            max_tables_per_component: 16,
            guest_threads: 0,
            guest_nice: 10,
        }
    }
}

impl EngineConfig {
    /// The wasmtime configuration; everything that affects compiled code is set here, so the
    /// compile worker and the server agree on the engine fingerprint.
    fn wasmtime_config(&self, pooling: bool) -> Config {
        let mut c = Config::new();
        c.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(self.max_wasm_stack)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true);
        // Proposals that no supported ABI or toolchain output needs are off, so a module that
        // uses them is refused at upload as invalid instead of reaching younger compiler and
        // runtime paths: shared memories and threads (no WASI threads here), GC and typed
        // function references, 64-bit and multiple memories (a slot's memory bound assumes
        // 32-bit memories, one per module), exceptions, stack switching, custom page sizes
        // and wide arithmetic. SIMD, relaxed SIMD, bulk memory, reference types, multi-value,
        // tail calls and extended constants stay on: current Rust, C, Python and JavaScript
        // toolchains emit them.
        c.wasm_threads(false)
            .wasm_shared_everything_threads(false)
            .wasm_gc(false)
            .wasm_function_references(false)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .wasm_exceptions(false)
            .wasm_stack_switching(false)
            .wasm_custom_page_sizes(false)
            .wasm_wide_arithmetic(false);
        if pooling {
            let n = self.max_instances.max(1);
            let (instances, memories, tables) = self.per_component();
            // Every total is the slot count times what one slot may hold, so no mix of
            // components, however greedy each is within its limits, can exhaust one kind of
            // resource while slots remain: the instance count alone is the pool's bound.
            let mut p = PoolingAllocationConfig::default();
            p.total_component_instances(n)
                .total_core_instances(n.saturating_mul(instances))
                .total_memories(n.saturating_mul(memories))
                .total_tables(n.saturating_mul(tables))
                .total_stacks(n)
                .total_gc_heaps(n)
                .max_core_instances_per_component(instances)
                .max_memories_per_component(memories)
                .max_tables_per_component(tables)
                .max_memories_per_module(1)
                .max_tables_per_module(4)
                .table_elements(crate::limits::MAX_TABLE_ELEMENTS)
                .max_core_instance_size(1 << 20)
                .max_component_instance_size(1 << 20)
                .max_memory_size((self.max_memory_mb as usize) << 20)
                .max_unused_warm_slots(n)
                .linear_memory_keep_resident(self.keep_resident_bytes)
                .table_keep_resident(TABLE_KEEP_RESIDENT)
                .async_stack_keep_resident(256 << 10)
                // Memory beyond what is kept resident is returned as soon as its instance
                // ends: batching would let freed but still resident memory pile up past the
                // host's memory budget.
                .decommit_batch_size(1)
                .pagemap_scan(Enabled::Auto);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
        }
        c
    }

    /// What one instance slot holds: core instances, memories and tables (at least one each).
    pub fn per_component(&self) -> (u32, u32, u32) {
        (
            self.max_core_instances_per_component.max(1),
            self.max_memories_per_component.max(1),
            self.max_tables_per_component.max(1),
        )
    }

    /// The most memory that idle pool slots may keep resident (each linear memory slot keeps
    /// up to `keep_resident_bytes`, each table slot [`TABLE_KEEP_RESIDENT`]): the host memory budget must leave
    /// room for it.
    pub fn parked_bytes(&self) -> u64 {
        if !self.pooling {
            return 0;
        }
        let (_, memories, tables) = self.per_component();
        let slots = u64::from(self.max_instances.max(1));
        slots
            * (u64::from(memories) * self.keep_resident_bytes as u64
                + u64::from(tables) * TABLE_KEEP_RESIDENT as u64)
    }

    /// Builds the engine. `pooling` is false for the compile worker, which never instantiates.
    pub fn build(&self, pooling: bool) -> wasmtime::Result<Engine> {
        Engine::new(&self.wasmtime_config(pooling && self.pooling))
    }

    /// The epoch tick as a duration.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.epoch_tick_ms.max(1))
    }
}

/// Feeds `Hash` output into SHA-256, so the fingerprint is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A short hex fingerprint of everything that makes compiled code compatible with `engine`
/// (wasmtime version, compiler settings, features). Part of every compiled artifact's key.
pub fn fingerprint(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..12])
}

/// Starts the thread that advances the engine's epoch every tick; guests yield and check
/// their deadline on each tick. The thread lives as long as the process.
pub fn start_epoch_ticker(engine: Engine, tick: Duration) {
    std::thread::Builder::new()
        .name("wafer-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .expect("spawn epoch thread");
}
