//! The componentize-py that builds Python functions: `FANOUT_COMPONENTIZE_PY` when set (a
//! `componentize-py` executable), else the pinned release from PyPI, installed on first use
//! into fanout's cache with the host's Python (`FANOUT_PYTHON`, else `python3`). Owns that
//! installation and running the tool; it knows nothing of the app being built.

use super::error::PythonError;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The componentize-py release fanout builds with: its CPython and its output are fixed by it.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The CPython version inside that release, which pure-Python requirements are chosen for.
const GUEST_PYTHON: &str = "3.14";

/// How to start componentize-py.
pub(super) enum Tool {
    Executable(PathBuf),
    /// The package installed under `site` (a `pip install --target` folder), run by `python`.
    Package {
        python: PathBuf,
        site: PathBuf,
    },
}

impl Tool {
    pub(super) fn command(&self) -> Command {
        match self {
            Tool::Executable(path) => Command::new(path),
            Tool::Package { python, site } => {
                let mut command = Command::new(python);
                command.arg("-c").arg(
                    "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'componentize-py'; \
                     from componentize_py import script; sys.exit(script())",
                );
                command.arg(site);
                command.env_remove("VIRTUAL_ENV").env_remove("PYTHONPATH");
                command
            }
        }
    }

    fn python(&self) -> PathBuf {
        match self {
            Tool::Package { python, .. } => python.clone(),
            Tool::Executable(_) => host_python(),
        }
    }
}

pub(super) fn host_python() -> PathBuf {
    std::env::var_os("FANOUT_PYTHON").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("python3"))
}

/// componentize-py, installed now if it is not yet.
pub(super) fn componentize_py() -> Result<Tool, PythonError> {
    if let Some(path) = std::env::var_os("FANOUT_COMPONENTIZE_PY") {
        return Ok(Tool::Executable(PathBuf::from(path)));
    }
    let python = host_python();
    let site = crate::cache::cache_dir().join("python").join(format!("componentize-py-{COMPONENTIZE_PY}"));
    if site.join("componentize_py").is_dir() {
        return Ok(Tool::Package { python, site });
    }
    if std::io::stderr().is_terminal() {
        eprintln!("fanout: installing componentize-py {COMPONENTIZE_PY} from PyPI into {} (once)", site.display());
    }
    // Into a folder of its own first: a failed or concurrent install never leaves half a tool.
    let partial = site.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&partial)
        .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
        .stdin(Stdio::null());
    let ran = output(pip, &python.display().to_string())?;
    if !ran.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(PythonError::Toolchain(format!(
            "installing componentize-py {COMPONENTIZE_PY} with {} -m pip failed: {} \
             (or set FANOUT_COMPONENTIZE_PY to a componentize-py {COMPONENTIZE_PY} executable)",
            python.display(),
            last_line(&ran.stderr)
        )));
    }
    if std::fs::rename(&partial, &site).is_err() {
        // Another fanout installed it meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(Tool::Package { python, site })
}

/// The requirements' pure-Python wheels, for the guest's CPython, into `target`.
pub(super) fn install_requirements(tool: &Tool, requirements: &Path, target: &Path) -> Result<(), PythonError> {
    install_with(&tool.python(), requirements, target, GUEST_PYTHON)
}

/// The requirements' pure-Python wheels, for CPython `guest_python`, into `target`, with the
/// host's Python.
pub(super) fn install_pure_requirements(
    requirements: &Path,
    target: &Path,
    guest_python: &str,
) -> Result<(), PythonError> {
    install_with(&host_python(), requirements, target, guest_python)
}

fn install_with(python: &Path, requirements: &Path, target: &Path, guest_python: &str) -> Result<(), PythonError> {
    let mut pip = Command::new(python);
    pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(target)
        .args(["--only-binary=:all:", "--implementation", "py", "--python-version", guest_python, "-r"])
        .arg(requirements)
        .stdin(Stdio::null());
    let ran = output(pip, &python.display().to_string())?;
    if ran.status.success() {
        return Ok(());
    }
    Err(PythonError::Requirements {
        file: requirements.display().to_string(),
        message: format!(
            "pip found no pure-Python wheel for CPython {guest_python} in WebAssembly: {} \
             (only pure-Python packages can be bundled)",
            last_line(&ran.stderr)
        ),
    })
}

/// Runs `command` to its end and keeps what it printed.
pub(super) fn output(mut command: Command, name: &str) -> Result<Output, PythonError> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().map_err(|e| {
        PythonError::Toolchain(format!(
            "building a Python function needs {name} (Python 3 with pip, to run componentize-py {COMPONENTIZE_PY}): {e}"
        ))
    })
}

pub(super) fn last_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    text.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or("no message").chars().take(300).collect()
}
