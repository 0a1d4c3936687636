//! Capturing a guest's stdout and stderr with a byte cap. The first 64 KiB stay in memory
//! and only more is spilled to a file, so a quiet or terse guest costs no file at all, and
//! its last words survive even when the staging disk is full. Past the cap a stream either
//! drops what comes (logs) or fails the write (outputs, where a truncated object would be
//! a lie); either way the overflow is remembered and reported.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// What happens to bytes written past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the first `cap` bytes, drop the rest silently (the guest never notices).
    Truncate,
    /// Fail the write: the guest sees an I/O error, and the attempt is failed afterwards.
    Fail,
}

/// What a capture keeps in memory before it spills to its file.
pub const IN_MEMORY: usize = 64 << 10;

#[derive(Debug, Default)]
struct State {
    memory: Vec<u8>,
    file: Option<std::fs::File>,
    written: u64,
    overflowed: bool,
    error: Option<String>,
}

/// Where a capture's bytes are.
#[derive(Debug, Clone)]
pub enum Kept {
    Memory(bytes::Bytes),
    File(PathBuf),
}

impl Kept {
    /// The whole capture (a file is read).
    pub fn read(&self) -> std::io::Result<bytes::Bytes> {
        match self {
            Kept::Memory(bytes) => Ok(bytes.clone()),
            Kept::File(path) => std::fs::read(path).map(bytes::Bytes::from),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Kept::File(path) => Some(path),
            Kept::Memory(_) => None,
        }
    }
}

/// A cloneable handle: the guest's stream and the host's view share one state.
#[derive(Clone, Debug)]
pub struct CappedCapture {
    path: PathBuf,
    cap: u64,
    overflow: Overflow,
    state: Arc<Mutex<State>>,
}

/// What a capture holds once the guest is done.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The bytes, when anything was written.
    pub kept: Option<Kept>,
    pub overflowed: bool,
    /// A host-side failure to write the capture file (disk full, ...).
    pub error: Option<String>,
}

impl CappedCapture {
    pub fn new(path: &Path, cap: u64, overflow: Overflow) -> Self {
        CappedCapture { path: path.to_path_buf(), cap, overflow, state: Arc::new(Mutex::new(State::default())) }
    }

    pub fn finish(&self) -> Captured {
        let mut state = self.state.lock().expect("capture lock");
        let kept = match state.file.take() {
            Some(_) => Some(Kept::File(self.path.clone())),
            None if state.written > 0 => Some(Kept::Memory(bytes::Bytes::from(std::mem::take(&mut state.memory)))),
            None => None,
        };
        Captured { kept, overflowed: state.overflowed, error: state.error.clone() }
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("capture lock");
        let room = self.cap.saturating_sub(state.written);
        let (keep, over) = if (bytes.len() as u64) > room { (room as usize, true) } else { (bytes.len(), false) };
        if keep > 0 && state.file.is_none() && state.memory.len() + keep <= IN_MEMORY {
            state.memory.extend_from_slice(&bytes[..keep]);
            state.written += keep as u64;
        } else if keep > 0 {
            if state.file.is_none() {
                // Spill: the file starts with what memory held.
                let created = std::fs::File::create(&self.path).and_then(|mut file| {
                    file.write_all(&state.memory)?;
                    Ok(file)
                });
                match created {
                    Ok(file) => {
                        state.file = Some(file);
                        state.memory = Vec::new();
                    }
                    Err(e) => {
                        state.error = Some(format!("{}: {e}", self.path.display()));
                        return Err(e);
                    }
                }
            }
            if let Err(e) = state.file.as_mut().expect("created above").write_all(&bytes[..keep]) {
                state.error = Some(format!("{}: {e}", self.path.display()));
                return Err(e);
            }
            state.written += keep as u64;
        }
        if over {
            state.overflowed = true;
            if self.overflow == Overflow::Fail {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("output is larger than the {} byte limit", self.cap),
                ));
            }
        }
        Ok(())
    }
}

impl IsTerminal for CappedCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CappedCapture {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedCapture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes).map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl tokio::io::AsyncWrite for CappedCapture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_bytes(buf).map(|_| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_streams_create_no_file_and_caps_hold() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = CappedCapture::new(&dir.path().join("quiet"), 10, Overflow::Truncate);
        assert!(quiet.finish().kept.is_none());
        assert!(!dir.path().join("quiet").exists());

        let log = CappedCapture::new(&dir.path().join("log"), 10, Overflow::Truncate);
        log.write_bytes(b"0123456789abcdef").unwrap();
        let captured = log.finish();
        assert!(captured.overflowed);
        assert_eq!(&captured.kept.unwrap().read().unwrap()[..], b"0123456789");
        assert!(!dir.path().join("log").exists(), "a short capture stays in memory");

        let big = CappedCapture::new(&dir.path().join("big"), 1 << 20, Overflow::Truncate);
        big.write_bytes(&vec![b'a'; IN_MEMORY]).unwrap();
        big.write_bytes(b"bc").unwrap();
        let captured = big.finish();
        assert_eq!(captured.kept.as_ref().and_then(Kept::file), Some(dir.path().join("big").as_path()));
        assert_eq!(captured.kept.unwrap().read().unwrap().len(), IN_MEMORY + 2, "spilled whole, in order");

        let output = CappedCapture::new(&dir.path().join("out"), 4, Overflow::Fail);
        assert!(output.write_bytes(b"12345").is_err());
        assert!(output.finish().overflowed);
    }
}
