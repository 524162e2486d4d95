//! The runner: compile once, keep pre-linked instances hot, run invocations.

use crate::abi::command::{self, CommandRun};
use crate::abi::{self, HostState, Input, Output, P1State};
use crate::compile::isolated::IsolatedCompiler;
use crate::compile::requirements::{self, Requirements};
use crate::compile::{self, CompileMode};
use crate::engine::{self, EngineConfig};
use crate::error::{CompileError, InvokeError};
use crate::limits::Limits;
use crate::pool::GuestPool;
use bytes::Bytes;
use std::sync::Arc;
use tracing::Instrument;
use wafer_core::artifacts::ArtifactKey;
use wafer_core::{Abi, ArtifactStore, Digest};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstancePre, Module, Precompiled};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Engine ceilings and pool size.
    pub engine: EngineConfig,
    /// How many pre-linked modules to keep hot.
    pub hot_entries: u64,
    /// Where compilation happens.
    pub compile: CompileMode,
    /// Scratch directory for the compile worker's files.
    pub scratch_dir: std::path::PathBuf,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            hot_entries: 1024,
            compile: CompileMode::InProcess,
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// A module compiled, linked and ready to instantiate in microseconds.
pub enum Prepared {
    /// An HTTP component.
    Http(ProxyPre<HostState>),
    /// A preview 2 command component.
    CommandComponent(CommandPre<HostState>),
    /// A preview 1 command module.
    CommandModule(InstancePre<P1State>),
}

impl Prepared {
    /// The ABI this module speaks.
    pub fn abi(&self) -> Abi {
        match self {
            Prepared::Http(_) => Abi::Http,
            _ => Abi::Command,
        }
    }
}

/// A module accepted at upload.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Its content address.
    pub digest: Digest,
    /// The ABI it speaks.
    pub abi: Abi,
    /// What one instantiation takes (None: could not be told from the binary).
    pub requirements: Option<Requirements>,
}

/// One invocation's inputs.
#[derive(Debug)]
pub struct Invocation {
    /// Its limits.
    pub limits: Limits,
    /// `argv` of commands (the function name first).
    pub args: Vec<String>,
    /// The only environment the guest sees.
    pub env: Vec<(String, String)>,
    /// The request.
    pub input: Input,
}

/// One invocation's result.
#[derive(Debug)]
pub struct Outcome {
    /// The response.
    pub output: Output,
    /// The tail of the guest's log output.
    pub log: Bytes,
    /// Fuel consumed.
    pub fuel: u64,
}

/// The engine with its linkers, the artifact store and the hot cache.
pub struct Runner {
    engine: Engine,
    fingerprint: String,
    config: RunnerConfig,
    components: Linker<HostState>,
    modules: wasmtime::Linker<P1State>,
    artifacts: Arc<dyn ArtifactStore>,
    hot: moka::sync::Cache<Digest, Arc<Prepared>>,
    compiler: Option<IsolatedCompiler>,
    guests: GuestPool,
    recompiling: tokio::sync::Mutex<()>,
}

fn link_error(e: wasmtime::Error) -> CompileError {
    CompileError::UnsupportedImport(format!("{e:#}"))
}

impl Runner {
    /// Builds the engine and linkers and starts the epoch ticker.
    pub fn new(config: RunnerConfig, artifacts: Arc<dyn ArtifactStore>) -> wasmtime::Result<Self> {
        let engine = config.engine.build(true)?;
        engine::start_epoch_ticker(engine.clone(), config.engine.tick());
        let mut components = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut components)?;
        let mut modules = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut P1State| s.wasi())?;
        let fingerprint = engine::fingerprint(&engine);
        let hot = moka::sync::Cache::new(config.hot_entries);
        let guests = GuestPool::new(config.engine.guest_threads, config.engine.guest_nice)?;
        let compiler = match &config.compile {
            CompileMode::InProcess => None,
            CompileMode::Worker {
                program,
                args,
                timeout,
                memory_bytes,
            } => Some(IsolatedCompiler::new(
                &config.engine,
                program.clone(),
                args.clone(),
                config.scratch_dir.clone(),
                *timeout,
                *memory_bytes,
            )),
        };
        Ok(Self {
            engine,
            fingerprint,
            config,
            components,
            modules,
            artifacts,
            hot,
            compiler,
            guests,
            recompiling: tokio::sync::Mutex::new(()),
        })
    }

    /// The engine fingerprint that keys compiled artifacts.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The artifact store modules and compiled code live in.
    pub fn artifacts(&self) -> &Arc<dyn ArtifactStore> {
        &self.artifacts
    }

    /// Drops the hot pre-linked instance of `digest` (its code was collected).
    pub fn forget(&self, digest: &Digest) {
        self.hot.invalidate(digest);
    }

    /// The engine settings (ceilings for per-function limits).
    pub fn engine_config(&self) -> &EngineConfig {
        &self.config.engine
    }

    fn compiled_key(&self, digest: &Digest) -> ArtifactKey {
        ArtifactKey::compiled(&self.fingerprint, digest).expect("fingerprint is hex")
    }

    /// Validates, compiles and stores a module, and makes it hot. Returns its digest, ABI and
    /// requirements. A module compiled before (by this engine) is not compiled again; one that
    /// needs more than an instance slot holds is refused before it is compiled.
    pub async fn compile(&self, bytes: Bytes) -> Result<Compiled, CompileError> {
        compile::detect(&bytes)?;
        let (digest, requirements, screened) = {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || {
                (
                    Digest::of(&b),
                    requirements::of(&b),
                    crate::compile::screen::check(&b),
                )
            })
            .await
            .map_err(|e| CompileError::Internal(e.to_string()))?
        };
        screened?;
        if let Some(r) = &requirements {
            self.check_requirements(r)?;
        }
        let accepted = |digest: Digest, abi: Abi| Compiled {
            digest,
            abi,
            requirements,
        };
        if let Some(p) = self.hot.get(&digest) {
            return Ok(accepted(digest, p.abi()));
        }
        let key = self.compiled_key(&digest);
        let internal = |e: wafer_core::ArtifactError| CompileError::Internal(e.to_string());
        if self.artifacts.exists(&key).await.map_err(internal)?
            && let Ok(p) = self.load(&digest).await
        {
            return Ok(accepted(digest, p.abi()));
        }
        let module_key = ArtifactKey::Module(digest.clone());
        let started = std::time::Instant::now();
        let mut confinement = None;
        let code = match &self.compiler {
            None => {
                let engine = self.engine.clone();
                let b = bytes.clone();
                let (_, code) = tokio::task::spawn_blocking(move || compile::compile(&engine, &b))
                    .await
                    .map_err(|e| CompileError::Internal(e.to_string()))??;
                code
            }
            Some(compiler) => {
                let tag = format!("{}-{:08x}", &digest.hex()[..16], unique_tag());
                // Removed when this future ends, also when it is dropped because the client
                // went away mid-compile (the worker is killed on drop too).
                let scratch = ScratchFiles {
                    input: self.config.scratch_dir.join(format!("wafer-{tag}.wasm")),
                    output: self.config.scratch_dir.join(format!("wafer-{tag}.cwasm")),
                };
                tokio::fs::write(&scratch.input, &bytes)
                    .await
                    .map_err(|e| CompileError::Internal(e.to_string()))?;
                let (_, confined) = compiler.compile(&scratch.input, &scratch.output).await?;
                confinement = confined;
                tokio::fs::read(&scratch.output)
                    .await
                    .map_err(|e| CompileError::Internal(e.to_string()))?
            }
        };
        let compiled = started.elapsed();
        // Both artifacts are written (and synced) concurrently.
        let (module_put, code_put) = tokio::join!(
            self.artifacts.put(&module_key, bytes),
            self.artifacts.put(&key, Bytes::from(code))
        );
        module_put.map_err(internal)?;
        code_put.map_err(internal)?;
        let stored = started.elapsed();
        let prepared = self.load(&digest).await.map_err(|e| match e {
            LoadError::Refused(e) => e,
            LoadError::Missing(e) | LoadError::Unavailable(e) => CompileError::Internal(e),
        })?;
        tracing::info!(
            %digest,
            compile_ms = compiled.as_millis() as u64,
            store_ms = (stored - compiled).as_millis() as u64,
            load_ms = (started.elapsed() - stored).as_millis() as u64,
            confinement = ?confinement,
            "compiled module"
        );
        Ok(accepted(digest, prepared.abi()))
    }

    /// Refuses a module that needs more than an instance slot holds or more memory at start
    /// than any function may have.
    fn check_requirements(&self, r: &Requirements) -> Result<(), CompileError> {
        let engine = &self.config.engine;
        let (instances, memories, tables) = engine.per_component();
        for (what, needs, limit, setting) in [
            (
                "core instances",
                r.core_instances,
                instances,
                "max_core_instances_per_component",
            ),
            (
                "linear memories",
                r.memories,
                memories,
                "max_memories_per_component",
            ),
            ("tables", r.tables, tables, "max_tables_per_component"),
        ] {
            if needs > u64::from(limit) {
                return Err(CompileError::Limits(format!(
                    "instantiating it takes {needs} {what}; an instance slot holds {limit} \
                     (engine.{setting})"
                )));
            }
        }
        let most = engine.max_memory_mb << 20;
        if r.initial_bytes > most {
            return Err(CompileError::Limits(format!(
                "its memories and tables take {} bytes before any code runs; the most a \
                 function may have is {most} bytes (engine.max_memory_mb = {})",
                r.initial_bytes, engine.max_memory_mb
            )));
        }
        Ok(())
    }

    /// The hot pre-linked module for `digest`, loading its compiled code on a miss. The flag
    /// is true on a miss (a cold start). Compiled code missing for this engine (after an
    /// upgrade of wasmtime or of compile settings) is rebuilt from the stored module first.
    pub async fn prepare(&self, digest: &Digest) -> Result<(Arc<Prepared>, bool), InvokeError> {
        if let Some(p) = self.hot.get(digest) {
            return Ok((p, false));
        }
        match self.load(digest).await {
            Ok(p) => Ok((p, true)),
            Err(LoadError::Missing(_)) => {
                self.recompile(digest).await.map_err(|e| {
                    InvokeError::Artifact(format!("recompiling for this engine failed: {e}"))
                })?;
                self.load(digest)
                    .await
                    .map(|p| (p, true))
                    .map_err(|e| InvokeError::Artifact(e.to_string()))
            }
            Err(e) => Err(InvokeError::Artifact(e.to_string())),
        }
    }

    /// Makes sure compiled code for this engine exists for `digest`, rebuilding it from the
    /// stored module when it does not. Returns true when it compiled.
    pub async fn ensure_compiled(&self, digest: &Digest) -> Result<bool, CompileError> {
        let key = self.compiled_key(digest);
        let exists = self
            .artifacts
            .exists(&key)
            .await
            .map_err(|e| CompileError::Internal(e.to_string()))?;
        if exists {
            return Ok(false);
        }
        self.recompile(digest).await?;
        Ok(true)
    }

    /// Compiles the stored module `digest` again, one recompilation at a time; a caller that
    /// waited finds the code another one built.
    async fn recompile(&self, digest: &Digest) -> Result<(), CompileError> {
        let _one = self.recompiling.lock().await;
        let internal = |e: String| CompileError::Internal(e);
        let key = self.compiled_key(digest);
        if self.hot.contains_key(digest)
            || self
                .artifacts
                .exists(&key)
                .await
                .map_err(|e| internal(e.to_string()))?
        {
            return Ok(());
        }
        let bytes = self
            .artifacts
            .get(&ArtifactKey::Module(digest.clone()))
            .await
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| internal(format!("the module {digest} is not stored")))?;
        tracing::info!(%digest, fingerprint = %self.fingerprint, "recompiling for this engine");
        self.compile(bytes).await.map(|_| ())
    }

    async fn load(&self, digest: &Digest) -> Result<Arc<Prepared>, LoadError> {
        let key = self.compiled_key(digest);
        let unavailable = |e: String| LoadError::Unavailable(e);
        let path = self.artifacts.local_path(&key).filter(|p| p.exists());
        let bytes = match path {
            Some(_) => None,
            None => Some(
                self.artifacts
                    .get(&key)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                    .ok_or_else(|| LoadError::Missing(format!("no compiled code for {digest}")))?,
            ),
        };
        let engine = self.engine.clone();
        let loaded = tokio::task::spawn_blocking(move || -> wasmtime::Result<Loaded> {
            // SAFETY: compiled artifacts are only ever written by this runner's own compiler
            // (in process or in the compile worker) into the artifact store, keyed by the
            // engine fingerprint; wasmtime checks the header and compatibility again.
            unsafe {
                match (&path, &bytes) {
                    (Some(p), _) => match Engine::detect_precompiled_file(p)? {
                        Some(Precompiled::Component) => {
                            Ok(Loaded::Component(Component::deserialize_file(&engine, p)?))
                        }
                        Some(Precompiled::Module) => {
                            Ok(Loaded::Module(Module::deserialize_file(&engine, p)?))
                        }
                        None => wasmtime::bail!("not a compiled artifact"),
                    },
                    (None, Some(b)) => match Engine::detect_precompiled(b) {
                        Some(Precompiled::Component) => {
                            Ok(Loaded::Component(Component::deserialize(&engine, b)?))
                        }
                        Some(Precompiled::Module) => {
                            Ok(Loaded::Module(Module::deserialize(&engine, b)?))
                        }
                        None => wasmtime::bail!("not a compiled artifact"),
                    },
                    (None, None) => unreachable!("either a path or bytes"),
                }
            }
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
        // The engine refuses code it compiled itself only for limits its pool enforces
        // (table sizes, instance sizes, counts per module).
        .map_err(|e| LoadError::Refused(CompileError::Limits(format!("{e:#}"))))?;
        let prepared = match loaded {
            Loaded::Module(m) => Prepared::CommandModule(
                self.modules
                    .instantiate_pre(&m)
                    .map_err(|e| LoadError::Refused(link_error(e)))?,
            ),
            Loaded::Component(c) => {
                let pre = self
                    .components
                    .instantiate_pre(&c)
                    .map_err(|e| LoadError::Refused(link_error(e)))?;
                let http = c
                    .component_type()
                    .exports(&self.engine)
                    .any(|(n, _)| n.starts_with("wasi:http/incoming-handler@0.2"));
                // The names were checked at upload; here the types are.
                let wrong = |what: &str, e: wasmtime::Error| {
                    LoadError::Refused(CompileError::UnsupportedAbi(format!(
                        "the component's {what} export has the wrong shape: {e:#}"
                    )))
                };
                if http {
                    Prepared::Http(
                        ProxyPre::new(pre).map_err(|e| wrong("wasi:http/incoming-handler", e))?,
                    )
                } else {
                    Prepared::CommandComponent(
                        CommandPre::new(pre).map_err(|e| wrong("wasi:cli/run", e))?,
                    )
                }
            }
        };
        let prepared = Arc::new(prepared);
        self.hot.insert(digest.clone(), prepared.clone());
        Ok(prepared)
    }

    /// Runs one invocation in a fresh store, on the guest pool.
    pub async fn invoke(
        &self,
        prepared: Arc<Prepared>,
        inv: Invocation,
    ) -> Result<Outcome, InvokeError> {
        if inv.limits.memory_bytes > (self.config.engine.max_memory_mb as usize) << 20 {
            return Err(InvokeError::Internal(
                "memory limit above the engine's maximum".into(),
            ));
        }
        let engine = self.engine.clone();
        let span = tracing::Span::current();
        self.guests
            .run(async move { run(&engine, &prepared, inv).await }.instrument(span))
            .await
            .map_err(|e| {
                InvokeError::Internal(if e.is_panic() {
                    "the invocation panicked".into()
                } else {
                    "the invocation was cancelled".into()
                })
            })?
    }
}

/// Runs one invocation of `prepared` in a fresh store of `engine`.
async fn run(
    engine: &Engine,
    prepared: &Prepared,
    inv: Invocation,
) -> Result<Outcome, InvokeError> {
    let Invocation {
        limits,
        args,
        env,
        input,
    } = inv;
    {
        let command_result = |r: CommandRun| Outcome {
            output: Output::Stdout(r.stdout),
            log: r.stderr,
            fuel: r.fuel,
        };
        match (prepared, input) {
            (Prepared::Http(pre), Input::Http(req)) => {
                let r = abi::http::run(engine, pre, &limits, &env, *req).await?;
                Ok(Outcome {
                    output: Output::Http(r.response),
                    log: r.log,
                    fuel: r.fuel,
                })
            }
            (Prepared::CommandModule(pre), Input::Stdin(stdin)) => {
                command::run_module(engine, pre, &limits, &args, &env, stdin)
                    .await
                    .map(command_result)
            }
            (Prepared::CommandComponent(pre), Input::Stdin(stdin)) => {
                command::run_component(engine, pre, &limits, &args, &env, stdin)
                    .await
                    .map(command_result)
            }
            _ => Err(InvokeError::Internal(
                "input does not match the function's ABI".into(),
            )),
        }
    }
}

enum Loaded {
    Module(Module),
    Component(Component),
}

/// Why compiled code could not be made ready.
enum LoadError {
    /// There is none for this engine.
    Missing(String),
    /// The artifact store failed.
    Unavailable(String),
    /// The engine refuses it (limits, imports, export shapes).
    Refused(CompileError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing(s) | LoadError::Unavailable(s) => f.write_str(s),
            LoadError::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// The compile worker's input and output files, removed when dropped.
struct ScratchFiles {
    input: std::path::PathBuf,
    output: std::path::PathBuf,
}

impl Drop for ScratchFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.input);
        let _ = std::fs::remove_file(&self.output);
    }
}

/// A number unique within this process, for scratch file names (one server owns a data dir).
fn unique_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
