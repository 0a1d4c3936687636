//! What can go wrong building a Python function, each error one line a user can act on.

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0} is a folder without main.py (a Python function is a .py script, or a folder with main.py)")]
    NoMain(String),
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    /// The script (or a module of its folder) does not compile: `file:line:column: message`.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: u32, column: u32, message: String },
    #[error("{file}: {message}")]
    Requirements { file: String, message: String },
    #[error("{0}")]
    Toolchain(String),
    #[error("componentize-py could not build {app}: {message}")]
    Build { app: String, message: String },
    #[error("{0}")]
    Cache(String),
}
