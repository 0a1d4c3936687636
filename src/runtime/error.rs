//! What can go wrong loading a function into the runtime, each error one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{name}: not a WebAssembly module or component (it does not start with \\0asm)")]
    NotWasm { name: String },
    #[error("{name}: cannot compile: {message}")]
    Compile { name: String, message: String },
    #[error(
        "{name}: {message} (fanout provides WASI preview 1 to modules and WASI preview 2 to components, nothing else)"
    )]
    Link { name: String, message: String },
    #[error("cannot set up the runtime: {0}")]
    Engine(String),
    #[error("{}: {source}", path.display())]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Sandbox(String),
    /// A Python function's source does not compile: `file:line:column: message`.
    #[error("{0}")]
    PythonSyntax(String),
}
