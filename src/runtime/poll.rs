//! WASI p1 `poll_oneoff`, served by fanout instead of wasmtime-wasi. With blocking on the
//! current thread allowed (which keeps a guest's file calls on its worker thread, without
//! a hop to a thread pool), wasmtime-wasi serves a lone relative sleep with
//! `std::thread::sleep`, which no timeout or cancellation can cut short. Here every sleep
//! is a tokio timer, so the invocation's timeout and cancellation always win.
//!
//! Semantics (WASI snapshot preview 1): clock subscriptions on the realtime and monotonic
//! clocks, relative or absolute; fd_read and fd_write subscriptions are ready at once (in
//! this sandbox every descriptor is a file or a captured stream, which never blocks).

use std::time::{Duration, Instant, SystemTime};
use wasmtime::{Caller, Extern};

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const EVENTTYPE_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const SUBCLOCKFLAG_ABSTIME: u16 = 1;

/// The guest's monotonic clock: nanoseconds since the invocation's `origin`, so that an
/// absolute monotonic deadline can be turned back into an `Instant`.
pub struct OriginClock(pub Instant);

impl wasmtime_wasi::HostMonotonicClock for OriginClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Store data that can answer `poll_oneoff`.
pub trait HasClockOrigin {
    fn clock_origin(&self) -> Instant;
}

struct Subscription {
    userdata: u64,
    kind: u8,
    /// For clock subscriptions: when it fires.
    deadline: Option<Instant>,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// `poll_oneoff(in, out, nsubscriptions, nevents_out) -> errno`.
pub async fn poll_oneoff<T: HasClockOrigin + Send>(
    caller: &mut Caller<'_, T>,
    subscriptions: u32,
    events: u32,
    count: u32,
    events_written: u32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(ERRNO_INVAL);
    };
    if count == 0 {
        return Ok(ERRNO_INVAL);
    }
    let count = count as usize;
    let (start, length) = (subscriptions as usize, count * SUBSCRIPTION_SIZE);
    let Some(bytes) = memory.data(&*caller).get(start..start + length).map(<[u8]>::to_vec) else {
        return Ok(ERRNO_FAULT);
    };
    let now = Instant::now();
    let origin = caller.data().clock_origin();
    let mut subscriptions = Vec::with_capacity(count);
    for raw in bytes.chunks_exact(SUBSCRIPTION_SIZE) {
        let userdata = read_u64(raw, 0);
        let kind = raw[8];
        let deadline = match kind {
            EVENTTYPE_CLOCK => {
                let (id, timeout) = (read_u32(raw, 16), read_u64(raw, 24));
                let absolute = u16::from_le_bytes([raw[40], raw[41]]) & SUBCLOCKFLAG_ABSTIME != 0;
                let wait = match (id, absolute) {
                    (CLOCK_REALTIME | CLOCK_MONOTONIC, false) => Duration::from_nanos(timeout),
                    (CLOCK_MONOTONIC, true) => (origin + Duration::from_nanos(timeout)).saturating_duration_since(now),
                    (CLOCK_REALTIME, true) => {
                        let unix_now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                        Duration::from_nanos(timeout).saturating_sub(unix_now)
                    }
                    _ => return Ok(ERRNO_INVAL),
                };
                Some(now + wait.min(Duration::from_secs(100 * 365 * 24 * 3600)))
            }
            1 | 2 => None,
            _ => return Ok(ERRNO_INVAL),
        };
        subscriptions.push(Subscription { userdata, kind, deadline });
    }
    let any_fd = subscriptions.iter().any(|s| s.deadline.is_none());
    if !any_fd {
        let earliest = subscriptions.iter().filter_map(|s| s.deadline).min().expect("clock subscriptions");
        tokio::time::sleep_until(earliest.into()).await;
    }
    let fired = Instant::now();
    let mut out = Vec::new();
    for subscription in &subscriptions {
        if subscription.deadline.is_some_and(|deadline| deadline > fired) {
            continue;
        }
        let mut event = [0u8; EVENT_SIZE];
        event[0..8].copy_from_slice(&subscription.userdata.to_le_bytes());
        event[10] = subscription.kind;
        out.extend_from_slice(&event);
    }
    let written = (out.len() / EVENT_SIZE) as u32;
    let data = memory.data_mut(&mut *caller);
    let (events, events_written) = (events as usize, events_written as usize);
    if events + out.len() > data.len() || events_written + 4 > data.len() {
        return Ok(ERRNO_FAULT);
    }
    data[events..events + out.len()].copy_from_slice(&out);
    data[events_written..events_written + 4].copy_from_slice(&written.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}
