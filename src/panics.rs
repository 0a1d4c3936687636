//! Panics, told to whoever waits on them. A panic is a bug in fanout itself, never a
//! guest's doing (a guest traps inside wasmtime); where it strikes a worker thread or a
//! background task, the coordinator that waits for their message would wait forever. The
//! hook installed here records every panic as one line and sends it to the coordinators
//! listening ([`listen`]), which fail their run with it. Owns the process's panic hook and
//! nothing else; while nobody listens, panics print as Rust prints them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use tokio::sync::broadcast;

static PANICS: OnceLock<broadcast::Sender<String>> = OnceLock::new();
static LAST: Mutex<Option<String>> = Mutex::new(None);

/// The panics of this process from now on, each as one line ("at FILE:LINE: MESSAGE").
pub fn listen() -> broadcast::Receiver<String> {
    PANICS
        .get_or_init(|| {
            let (sender, _) = broadcast::channel(16);
            let told = sender.clone();
            let rust_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                let place = info.location().map(|l| format!("at {}:{}: ", l.file(), l.line())).unwrap_or_default();
                let line = format!("{place}{}", message.replace('\n', " "));
                if let Ok(mut last) = LAST.lock() {
                    *last = Some(line.clone());
                }
                // With a run listening, the run says it, once, as its error.
                if told.send(line).is_err() {
                    rust_hook(info);
                }
            }));
            sender
        })
        .subscribe()
}

/// The last panic's line, once one has been told to a listener: the CLI says it when the
/// panic reached the command itself.
pub fn last() -> Option<String> {
    LAST.lock().ok()?.clone()
}

/// Fails with a panic where `FANOUT_TEST_PANIC` names `place` (`place`, or `place@N` for
/// its Nth call only): for the tests that prove a panic in a worker thread or a background
/// task fails the run instead of hanging it. Costs one atomic load when unset.
#[track_caller]
pub fn injected(place: &str) {
    static NAMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let named = NAMED.get_or_init(|| {
        let value = std::env::var("FANOUT_TEST_PANIC").ok()?;
        Some(match value.split_once('@') {
            Some((place, nth)) => (place.to_string(), nth.parse().unwrap_or(1)),
            None => (value, 0),
        })
    });
    let Some((named, nth)) = named else { return };
    if named != place {
        return;
    }
    let call = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    if *nth == 0 || call == *nth {
        panic!("FANOUT_TEST_PANIC={place}: a panic injected for a test");
    }
}
