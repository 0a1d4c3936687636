//! Finding the function's bytes: a `.wasm` file, an `s3://` (or `az://`, `gs://`) object, a
//! Rust crate folder (such as `examples/thumbnail`) that is built for `wasm32-wasip1` with
//! cargo when its `.wasm` is missing or stale, or a Python script built by `python`. Owns
//! that resolution and its errors, which name no field (the caller knows which one it read);
//! compiling the bytes is `runtime`'s business.

use crate::location::Location;
use crate::storage::{self, StorageError, StorageOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target example crates are built for.
pub const CRATE_TARGET: &str = "wasm32-wasip1";

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} is not WebAssembly (a .wasm module or component, or a crate folder with Cargo.toml)")]
    NotWasm(String),
    #[error("{crate_dir}: cannot run cargo to build it: {source}")]
    NoCargo { crate_dir: String, source: std::io::Error },
    #[error("building {crate_dir} for {CRATE_TARGET} failed{hint}")]
    Build { crate_dir: String, hint: String },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Python(#[from] crate::python::PythonError),
}

/// The function's bytes and a name for messages.
pub struct FunctionBytes {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Set when the function was built from a crate (the .wasm cargo produced).
    pub built: Option<PathBuf>,
}

/// Resolves `function.wasm`. `quiet` hides cargo's progress (errors are still shown).
pub async fn load(location: &Location, options: &StorageOptions, quiet: bool) -> Result<FunctionBytes, FunctionError> {
    match location {
        Location::Local(path) => {
            if path.is_dir() {
                if path.join("Cargo.toml").is_file() {
                    let path = path.clone();
                    let wasm = tokio::task::spawn_blocking(move || build_crate(&path, quiet))
                        .await
                        .expect("the build task does not panic")?;
                    let bytes = std::fs::read(&wasm)
                        .map_err(|source| FunctionError::Read { path: wasm.display().to_string(), source })?;
                    return checked(location.to_string(), bytes, Some(wasm));
                }
                return Err(FunctionError::NotWasm(path.display().to_string()));
            }
            match tokio::fs::read(path).await {
                Ok(bytes) => checked(path.display().to_string(), bytes, None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(FunctionError::Missing(path.display().to_string()))
                }
                Err(source) => Err(FunctionError::Read { path: path.display().to_string(), source }),
            }
        }
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
            match storage::get_object(location, options).await {
                Ok(bytes) => checked(location.to_string(), bytes.to_vec(), None),
                Err(e) if e.is_not_found() => Err(FunctionError::Missing(location.to_string())),
                Err(e) => Err(e.into()),
            }
        }
        Location::Kafka { .. } => Err(FunctionError::NotWasm(location.to_string())),
    }
}

/// The job's function: its WebAssembly (or a stored form fetched from DEST), or a native
/// command's stored form (the sandbox it runs in; its words travel in every attempt's argv).
pub(crate) async fn load_function(
    function: &crate::job::Function,
    options: &StorageOptions,
    quiet: bool,
) -> Result<FunctionBytes, FunctionError> {
    match (&function.wasm, &function.command) {
        (Some(location), _) => load(location, options, quiet).await,
        (None, None) if function.python.is_some() => {
            let script = function.python.clone().expect("a Python function");
            let bytes = tokio::task::spawn_blocking(move || crate::python::build(&script, quiet))
                .await
                .expect("the build task does not panic")?;
            let name = function.python.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            Ok(FunctionBytes { name, bytes, built: None })
        }
        (None, Some(words)) => Ok(FunctionBytes {
            name: words.first().cloned().unwrap_or_default(),
            bytes: crate::runtime::native::document(function.sandbox),
            built: None,
        }),
        (None, None) => Err(FunctionError::Missing("(no function.wasm or function.command)".into())),
    }
}

fn checked(name: String, bytes: Vec<u8>, built: Option<PathBuf>) -> Result<FunctionBytes, FunctionError> {
    if !crate::runtime::looks_like_wasm(&bytes) && crate::runtime::native::read_document(&bytes).is_none() {
        return Err(FunctionError::NotWasm(name));
    }
    Ok(FunctionBytes { name, bytes, built })
}

/// Runs `cargo build --release --target wasm32-wasip1` in the crate and returns the path of
/// the .wasm it produced (cargo decides whether anything is stale). When the target is not
/// installed and rustup is at hand, it is added once (what the error would ask the user
/// to do) and the build is tried again.
pub fn build_crate(crate_dir: &Path, quiet: bool) -> Result<PathBuf, FunctionError> {
    if !target_installed(crate_dir) {
        add_target(quiet);
    }
    build_crate_once(crate_dir, quiet)
}

/// Whether the toolchain that builds `crate_dir` has the standard library for the target.
fn target_installed(crate_dir: &Path) -> bool {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .current_dir(crate_dir)
        .args(["--print", "sysroot"])
        .output();
    match sysroot {
        Ok(output) if output.status.success() => {
            let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            sysroot.join("lib/rustlib").join(CRATE_TARGET).is_dir()
        }
        // No rustc to ask: let cargo report what is wrong.
        _ => true,
    }
}

/// `rustup target add wasm32-wasip1`, once; cargo's error explains a failure.
fn add_target(quiet: bool) {
    if !quiet {
        eprintln!("fanout: the {CRATE_TARGET} target is missing; adding it with `rustup target add {CRATE_TARGET}`");
    }
    let _ = Command::new("rustup")
        .args(["target", "add", CRATE_TARGET])
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .status();
}

fn build_crate_once(crate_dir: &Path, quiet: bool) -> Result<PathBuf, FunctionError> {
    let shown = crate_dir.display().to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(CRATE_TARGET)
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        // From the crate's own folder, so that its .cargo/config.toml (target, flags) applies.
        .current_dir(crate_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Builds of the function must not inherit a host build's target-specific settings.
    command.env_remove("CARGO_BUILD_TARGET").env_remove("RUSTFLAGS");
    let no_cargo = |source| FunctionError::NoCargo { crate_dir: shown.clone(), source };
    let mut child = command.spawn().map_err(no_cargo)?;
    let cargo_stderr = child.stderr.take().expect("stderr is piped");
    let relay = std::thread::spawn(move || relay_cargo_messages(cargo_stderr, quiet));
    let output = child.wait_with_output().map_err(no_cargo)?;
    let stderr = relay.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let missing_target =
            ["target may not be installed", "can't find crate for `std`", "can't find crate for `core`"];
        let hint = if missing_target.iter().any(|m| stderr.contains(m) || stdout.contains(m)) {
            format!(": the {CRATE_TARGET} target is missing; run `rustup target add {CRATE_TARGET}`")
        } else if quiet && !stderr.trim().is_empty() {
            format!(":\n{}", stderr.trim_end())
        } else {
            " (see cargo's messages above)".to_string()
        };
        return Err(FunctionError::Build { crate_dir: shown, hint });
    }
    let mut wasm = None;
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_bin = message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if !is_bin {
            continue;
        }
        if let Some(files) = message["filenames"].as_array() {
            for file in files.iter().filter_map(|f| f.as_str()) {
                if file.ends_with(".wasm") {
                    wasm = Some(PathBuf::from(file));
                }
            }
        }
    }
    wasm.ok_or_else(|| FunctionError::Build {
        crate_dir: shown,
        hint: ": cargo produced no .wasm binary (is it a bin crate?)".into(),
    })
}

/// Passes cargo's messages on to the user (unless `quiet`) and returns them all. A build
/// that compiled nothing says nothing: cargo's lone `Finished` line would only be noise on
/// every run of a job whose function is a crate.
fn relay_cargo_messages(stderr: impl std::io::Read, quiet: bool) -> String {
    use std::io::BufRead;
    let mut all = String::new();
    let mut compiled = false;
    for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
        let message = line.trim_start();
        compiled |= message.starts_with("Compiling");
        let idle_finish = message.starts_with("Finished") && !compiled;
        if !quiet && !idle_finish {
            eprintln!("{line}");
        }
        all.push_str(&line);
        all.push('\n');
    }
    all
}
