//! `fanout serve`: resolves the job's function (input and output may be left out), loads and
//! compiles it once, binds the address (a taken port is one line, exit 2, before anything
//! is announced) and serves until SIGTERM or Ctrl-C, then answers what is in flight and
//! exits 0. The HTTP surface and the workers are `crate::serve`'s.

use super::args::ServeArgs;
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::runtime::{Limits, Runtime};
use crate::serve::workers::{self, Served, Workers};
use crate::serve::{self, Settings};
use crate::units::parse_size;
use anyhow::anyhow;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// Files one answer may hold (a tar of /out past one).
const MAX_OUTPUT_FILES: u64 = 1000;

impl ServeArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let (name, mut function, pool, origins) = crate::job::resolve_function(&self.job).map_err(usage)?;
        let address = match &self.listen {
            Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                usage(anyhow!("--listen: {text:?} is not an address and port (127.0.0.1:8080, [::]:80)"))
            })?,
            None => serve::default_address(|name| std::env::var(name).ok()).map_err(|e| usage(anyhow!(e)))?,
        };
        let max_body = parse_size(&self.max_body).map_err(|m| usage(anyhow!("--max-body: {m}")))?;
        let max_output = parse_size(&self.max_output).map_err(|m| usage(anyhow!("--max-output: {m}")))?;
        if self.queue == 0 {
            return Err(usage(anyhow!("--queue: at least 1")));
        }
        let token = match &self.token_env {
            Some(var) => match std::env::var(var) {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
                _ => return Err(usage(anyhow!("--token-env: ${var} is not set (or empty): no token to ask for"))),
            },
            None => None,
        };
        let options = self.storage.options();
        let field = function.field();
        let at = origins.prefix(field);
        let loaded = crate::function::load_function(&function, &options, false)
            .await
            .map_err(|e| usage(anyhow!("{at}{field}: {e}")))?;
        let files_dir = crate::side_files::pin_here(&mut function.files, &options)
            .await
            .map_err(|e| usage(anyhow!("{}{e}", origins.prefix("function.files"))))?;
        let limits = Limits { timeout: function.timeout(), memory_bytes: function.memory_bytes, concurrency: pool.max };
        let wasm = Bytes::from(loaded.bytes);
        let shown = loaded.name.clone();
        let (runtime, _) = tokio::task::spawn_blocking(move || Runtime::load(&loaded.name, &wasm, limits))
            .await
            .expect("loading the function does not panic")
            .map_err(|e| match e {
                crate::runtime::RuntimeError::Sandbox(message) => usage(anyhow!(message)),
                e => usage(anyhow!("{at}{field}: {e}")),
            })?;
        // Each request's sandbox is made here; in memory where the system keeps a tmpfs.
        let shm = std::path::Path::new("/dev/shm");
        let root = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let staging = tempfile::Builder::new()
            .prefix("fanout-serve-")
            .tempdir_in(&root)
            .or_else(|_| tempfile::Builder::new().prefix("fanout-serve-").tempdir())
            .map_err(|e| failed(anyhow!("cannot make a staging folder: {e}")))?;
        let served = Served {
            runtime: Arc::new(runtime),
            name,
            args: function.args.clone(),
            env: function.env.clone(),
            command: function.command.clone(),
            files_dir,
            staging: staging.path().to_path_buf(),
        };
        let limits = workers::Limits {
            max_workers: pool.max,
            queue: self.queue,
            idle: pool.idle(),
            max_output,
            max_output_files: MAX_OUTPUT_FILES,
        };
        let listener = serve::bind(address).await.map_err(|e| usage(anyhow!(e)))?;
        let bound = listener.local_addr().unwrap_or(address);
        eprintln!(
            "fanout: serving {shown} on http://{bound} (at most {} at once, {} waiting; POST /NAME, GET /healthz)",
            pool.max, self.queue
        );
        let settings = Settings { max_body, token, json_logs: self.json };
        let (stops, counted) = tokio::sync::watch::channel(0u32);
        tokio::spawn(count_stops(stops));
        serve::serve(listener, Workers::new(served, limits), settings, counted).await;
        eprintln!("fanout: stopped serving; every request taken was answered");
        drop(staging);
        Ok(EXIT_OK)
    }
}

/// Counts SIGTERMs (what Cloud Run, Knative and Kubernetes send) and Ctrl-Cs.
async fn count_stops(stops: tokio::sync::watch::Sender<u32>) {
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
    loop {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stops.send_modify(|count| *count += 1);
    }
}
