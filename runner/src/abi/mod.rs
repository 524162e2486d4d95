//! The two function ABIs and the store state they run in.

pub mod command;
pub mod http;

use crate::error::{InvokeError, TrapKind};
use crate::limits::{LimitHit, Limiter, Limits};
use bytes::Bytes;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// What an invocation is given.
#[derive(Debug)]
pub enum Input {
    /// The whole HTTP request, body buffered (HTTP components). Boxed: it is large.
    Http(Box<::http::Request<Bytes>>),
    /// Bytes for stdin (commands).
    Stdin(Bytes),
}

/// What an invocation produced.
#[derive(Debug)]
pub enum Output {
    /// The function's HTTP response, body buffered and capped.
    Http(::http::Response<Bytes>),
    /// A command's stdout.
    Stdout(Bytes),
}

/// Store state of components (HTTP handlers and preview 2 commands). Every WASI interface is
/// linked, nothing is granted: no preopened directories, no sockets, no outgoing HTTP, and
/// only the environment the function was configured with.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutgoing,
    limiter: Limiter,
}

/// Host resources (streams, pollables, header fields, …) a guest may hold at once.
pub const MAX_RESOURCES: usize = 4096;
/// Bytes of one set of HTTP header fields a guest may build (its in-memory size).
pub const MAX_FIELD_BYTES: usize = 32 << 10;

impl HostState {
    pub(crate) fn new(wasi: WasiCtx, limits: &Limits) -> Self {
        // Both bound host memory a guest can make the host hold outside its own budget.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELD_BYTES);
        Self {
            wasi,
            http,
            table,
            hooks: DenyOutgoing,
            limiter: Limiter::new(limits),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP is not granted to functions: every request is denied at the call.
pub struct DenyOutgoing;

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    ::http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        _request: ::http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Store state of preview 1 command modules.
pub struct P1State {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

impl P1State {
    pub(crate) fn new(wasi: WasiP1Ctx, limits: &Limits) -> Self {
        Self {
            wasi,
            limiter: Limiter::new(limits),
        }
    }

    pub(crate) fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

/// Access to the limiter inside either store state.
pub(crate) trait HasLimiter: Send + 'static {
    fn limiter(&mut self) -> &mut Limiter;
}

impl HasLimiter for HostState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

impl HasLimiter for P1State {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

/// Applies the invocation's limits to a fresh store: fuel, memory/table limiter and an
/// epoch callback that yields to the executor every tick and interrupts at the deadline.
pub(crate) fn apply_limits<T: HasLimiter>(
    store: &mut Store<T>,
    limits: &Limits,
    deadline: Instant,
) {
    store.limiter(|s| s.limiter());
    store
        .set_fuel(limits.fuel)
        .expect("fuel is enabled on the engine");
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// Fuel consumed so far in a store.
pub(crate) fn fuel_used<T>(store: &Store<T>, limits: &Limits) -> u64 {
    limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
}

/// Turns a wasmtime error into the precise reason, given what the store remembered.
pub(crate) fn classify(e: wasmtime::Error, hit: Option<LimitHit>, limits: &Limits) -> InvokeError {
    match hit {
        Some(LimitHit::Memory { limit, desired }) => {
            return InvokeError::MemoryLimit { limit, desired };
        }
        Some(LimitHit::Table { limit, desired }) => {
            return InvokeError::TableLimit { limit, desired };
        }
        None => {}
    }
    if let Some(o) = e.downcast_ref::<crate::output::OutputLimitExceeded>() {
        return InvokeError::OutputLimit {
            stream: "stdout",
            limit: o.0,
        };
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        let kind = match trap {
            Trap::Interrupt => return InvokeError::Timeout(limits.timeout),
            Trap::OutOfFuel => TrapKind::FuelExhausted,
            Trap::UnreachableCodeReached => TrapKind::Unreachable,
            Trap::StackOverflow => TrapKind::StackOverflow,
            Trap::MemoryOutOfBounds | Trap::HeapMisaligned => TrapKind::MemoryOutOfBounds,
            Trap::IntegerDivisionByZero | Trap::IntegerOverflow | Trap::BadConversionToInteger => {
                TrapKind::Arithmetic
            }
            _ => TrapKind::Other,
        };
        return InvokeError::Trap {
            kind,
            message: trap.to_string(),
        };
    }
    let message = format!("{e:#}");
    if message.contains("concurrent") && message.contains("limit") {
        return InvokeError::Capacity;
    }
    InvokeError::Trap {
        kind: TrapKind::Other,
        message,
    }
}

/// The exit status carried by an error, if the guest called `exit`.
pub(crate) fn exit_status(e: &wasmtime::Error) -> Option<i32> {
    e.downcast_ref::<I32Exit>().map(|x| x.0)
}

impl HostState {
    pub(crate) fn limiter_hit(&mut self) -> Option<LimitHit> {
        self.limiter.hit
    }
}

impl P1State {
    pub(crate) fn limiter_hit(&mut self) -> Option<LimitHit> {
        self.limiter.hit
    }
}
