//! Native commands (ffmpeg, tesseract, ImageMagick, a script) run per shard under the same
//! guarantees as WebAssembly guests: a sandbox built by bubblewrap (the shard's inputs
//! read-only at `/in`, `/out` writable, a private `/tmp`, the system's programs and
//! libraries read-only and nothing else of the host: no network, no home folders, no
//! `/etc/shadow`, a clean environment, its own user, process, IPC and UTS namespaces), the
//! job's timeout (the whole process tree dies with the sandbox's first process), its memory
//! cap and a process cap (a cgroup of its own when the host lets fanout make one, resource
//! limits otherwise), and stdout/stderr captured with the same caps as a guest's.
//!
//! Owns building the sandbox's command line and classifying how a command ended. It does
//! not expand a command's placeholders (`stage::Call` does, for every executor) and never
//! runs anything through a shell.

use super::capture::{CappedCapture, Overflow};
use super::invocation::{Invocation, InvocationReport, Limits, Outcome};
use std::ffi::{CString, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::job::Sandbox;

/// What a native function's stored bytes start with: they are this line, then the sandbox
/// as JSON. Content-addressed and uploaded like a .wasm, so remote workers load it the same
/// way; the command's words travel in each attempt's argv.
const DOCUMENT_MAGIC: &[u8] = b"#fanout-native-command\n";

/// The stored form of a native function.
pub fn document(sandbox: Sandbox) -> Vec<u8> {
    let mut bytes = DOCUMENT_MAGIC.to_vec();
    bytes.extend(serde_json::to_vec(&sandbox).expect("a sandbox serializes"));
    bytes
}

/// The sandbox of a native function's stored form, or `None` for anything else.
pub fn read_document(bytes: &[u8]) -> Option<Sandbox> {
    serde_json::from_slice(bytes.strip_prefix(DOCUMENT_MAGIC)?).ok()
}

/// Processes one invocation may have at once (a fork bomb stops here).
const MAX_PROCESSES: u64 = 256;

/// Files of `/etc` that programs need and that hold no secrets: the dynamic loader's cache,
/// Debian's alternatives (ffmpeg's libraries go through them), fonts, ImageMagick's policy,
/// MIME and file-type tables, the time zone. Bound read-only when the host has them.
const ETC_ALLOWED: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "fonts",
    "ImageMagick-6",
    "ImageMagick-7",
    "magic",
    "magic.mime",
    "mime.types",
    "localtime",
];

/// Top-level folders that are the system's programs and libraries: bound read-only, or
/// re-made as the same symbolic links (`/bin -> usr/bin` on a merged-/usr system).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "function.sandbox: bubblewrap is not installed (no `bwrap` on PATH): install the `bubblewrap` package \
         (apt-get install bubblewrap), or set sandbox = \"none\" to run commands without isolation"
    )]
    Missing,
    #[error("function.sandbox: bubblewrap cannot make a sandbox here ({0}): user namespaces may be disabled")]
    Broken(String),
}

/// A job's native command, ready to run in its sandbox many times at once.
pub struct NativeCommand {
    bwrap: Option<PathBuf>,
    /// What every sandbox starts with: the namespaces, the system's folders and `/etc`.
    system: Vec<OsString>,
    /// The allowed files of `/etc`, copied once into a folder bound whole (one mount a
    /// sandbox instead of one a file: about 2 ms an invocation here).
    _etc: Option<SandboxEtc>,
    cgroups: Option<CgroupRoot>,
}

impl NativeCommand {
    /// Finds bubblewrap and proves it can make a sandbox here (one `true` in it), once.
    pub fn new(sandbox: Sandbox) -> Result<NativeCommand, SandboxError> {
        let bwrap = match sandbox {
            Sandbox::None => None,
            Sandbox::Bubblewrap => Some(find_bwrap()?),
        };
        if let Some(bwrap) = &bwrap {
            let probe = std::process::Command::new(bwrap)
                .args(namespaces())
                .args(["--ro-bind", "/usr", "/usr"])
                .args(system_links())
                .arg("true")
                .env_clear()
                .stdin(Stdio::null())
                .output()
                .map_err(|e| SandboxError::Broken(e.to_string()))?;
            if !probe.status.success() {
                let said = String::from_utf8_lossy(&probe.stderr).trim().to_string();
                return Err(SandboxError::Broken(if said.is_empty() { probe.status.to_string() } else { said }));
            }
        }
        let etc = bwrap.as_ref().and_then(|_| SandboxEtc::make());
        let mut system: Vec<OsString> = namespaces().into_iter().map(OsString::from).collect();
        system.extend(["--ro-bind", "/usr", "/usr"].map(OsString::from));
        system.extend(system_links());
        match &etc {
            Some(etc) => system.extend(["--ro-bind".into(), etc.0.clone().into_os_string(), "/etc".into()]),
            None => {
                for host in ETC_ALLOWED.iter().map(|name| Path::new("/etc").join(name)).filter(|host| host.exists()) {
                    system.extend(["--ro-bind".into(), host.clone().into_os_string(), host.into_os_string()]);
                }
            }
        }
        Ok(NativeCommand { bwrap, system, _etc: etc, cgroups: CgroupRoot::find() })
    }

    /// Runs the invocation's argv (`argv[0]` is the program) to its end, its timeout or
    /// its cancellation; every way it can end is an [`Outcome`].
    pub async fn invoke(
        &self,
        invocation: &Invocation,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> InvocationReport {
        let started = Instant::now();
        let stdout = CappedCapture::new(&invocation.stdout, invocation.stdout_cap, invocation.stdout_overflow);
        let stderr = CappedCapture::new(&invocation.stderr, invocation.stderr_cap, Overflow::Truncate);
        let cgroup = self.cgroups.as_ref().and_then(|root| root.make(limits.memory_bytes));
        let outcome = match self.command(invocation, limits, cgroup.as_ref()) {
            Ok(command) => run(command, &stdout, &stderr, limits, cancel, cgroup.as_ref()).await,
            Err(message) => Outcome::Error(message),
        };
        if let Some(cgroup) = cgroup {
            cgroup.remove();
        }
        let (stdout, stderr) = (stdout.finish(), stderr.finish());
        let outcome = match outcome {
            Outcome::Ok if stdout.overflowed && invocation.stdout_overflow == Overflow::Fail => {
                Outcome::Error(format!("stdout is larger than the {} byte output limit", invocation.stdout_cap))
            }
            other => other,
        };
        InvocationReport { outcome, stdout, stderr, elapsed: started.elapsed() }
    }

    fn command(
        &self,
        invocation: &Invocation,
        limits: &Limits,
        cgroup: Option<&Cgroup>,
    ) -> Result<tokio::process::Command, String> {
        let Some(program) = invocation.argv.first() else { return Err("the command is empty".into()) };
        let mut command = match &self.bwrap {
            Some(bwrap) => {
                let mut command = tokio::process::Command::new(bwrap);
                command.args(&self.system).args(sandbox_args(invocation)).arg("--").args(&invocation.argv);
                command
            }
            None => {
                let mut command = tokio::process::Command::new(unsandboxed_path(program, invocation));
                command.args(invocation.argv[1..].iter().map(|arg| unsandboxed_path(arg, invocation)));
                command.current_dir(&invocation.out_dir).env_clear().envs(environment(invocation));
                command
            }
        };
        command.stdin(match &invocation.stdin {
            Some(path) => std::fs::File::open(path)
                .map_err(|e| format!("cannot open the staged stdin {}: {e}", path.display()))?
                .into(),
            None => Stdio::null(),
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // Its own session and process group: a timeout kills the whole group.
        command.process_group(0);
        let procs = cgroup.map(|cgroup| cgroup.procs_files()).unwrap_or_default();
        let memory = limits.memory_bytes;
        let fallback_limits = cgroup.is_none();
        // SAFETY: between fork and exec only async-signal-safe calls run: open/write/close
        // on paths made before the fork, and setrlimit.
        unsafe {
            command.pre_exec(move || {
                for file in &procs {
                    join_cgroup(file)?;
                }
                if fallback_limits {
                    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, memory, memory);
                    let n = MAX_PROCESSES;
                    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n);
                }
                Ok(())
            });
        }
        Ok(command)
    }
}

/// Runs the command, copying its stdout and stderr into the captures, until it ends, times
/// out or is cancelled (then its process group is killed, and with it the sandbox).
async fn run(
    mut command: tokio::process::Command,
    stdout: &CappedCapture,
    stderr: &CappedCapture,
    limits: &Limits,
    cancel: &CancellationToken,
    cgroup: Option<&Cgroup>,
) -> Outcome {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::Error(format!("cannot start the command: {e}")),
    };
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let (mut out_capture, mut err_capture) = (stdout.clone(), stderr.clone());
    let copy_out = async move {
        let _ = tokio::io::copy(&mut out, &mut out_capture).await;
    };
    let copy_err = async move {
        let _ = tokio::io::copy(&mut err, &mut err_capture).await;
    };
    let waited = async {
        let (status, _, _) = tokio::join!(child.wait(), copy_out, copy_err);
        status
    };
    let ended = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        result = tokio::time::timeout(limits.timeout, waited) => Some(result),
    };
    let outcome = match ended {
        None => Outcome::Cancelled,
        Some(Err(_)) => Outcome::Timeout,
        Some(Ok(Err(e))) => Outcome::Error(format!("waiting for the command: {e}")),
        Some(Ok(Ok(status))) => {
            return classify(status, cgroup.is_some_and(Cgroup::ran_out_of_memory));
        }
    };
    kill_group(&mut child).await;
    outcome
}

/// Kills the command's process group (the sandbox's first process; bubblewrap's
/// `--die-with-parent` and the PID namespace take everything inside with it) and reaps it.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

fn classify(status: std::process::ExitStatus, out_of_memory: bool) -> Outcome {
    if out_of_memory {
        return Outcome::OutOfMemory;
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Outcome::Ok,
        (Some(code), _) => Outcome::Exit(code),
        (None, Some(signal)) => Outcome::Trap(format!("killed by signal {signal} ({})", signal_name(signal))),
        (None, None) => Outcome::Error(format!("the command ended oddly: {status}")),
    }
}

fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown")
}

/// The flags that give the sandbox nothing of the host's namespaces or session.
fn namespaces() -> Vec<&'static str> {
    // As root, --unshare-all only tries a user namespace: ask for one explicitly.
    vec![
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--uid",
        "65534",
        "--gid",
        "65534",
    ]
}

/// `/bin`, `/lib`... as the host has them: the same symbolic link, or a read-only bind.
fn system_links() -> Vec<OsString> {
    let mut args = Vec::new();
    for dir in SYSTEM_DIRS.iter().filter(|dir| **dir != "usr") {
        let host = Path::new("/").join(dir);
        match std::fs::read_link(&host) {
            Ok(target) => args.extend(["--symlink".into(), target.into_os_string(), host.into_os_string()]),
            Err(_) if host.is_dir() => {
                args.extend(["--ro-bind".into(), host.clone().into_os_string(), host.into_os_string()])
            }
            Err(_) => {}
        }
    }
    args
}

/// bubblewrap's arguments for one invocation, after the system's and up to the command.
fn sandbox_args(invocation: &Invocation) -> Vec<OsString> {
    let mut args = Vec::new();
    for (key, value) in environment(invocation) {
        args.extend(["--setenv".into(), key.into(), value.into()]);
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(OsString::from));
    args.extend(["--ro-bind".into(), invocation.in_dir.clone().into_os_string(), "/in".into()]);
    args.extend(["--bind".into(), invocation.out_dir.clone().into_os_string(), "/out".into()]);
    if let Some(files) = &invocation.files_dir {
        args.extend(["--ro-bind".into(), files.clone().into_os_string(), "/files".into()]);
    }
    args.extend(["--chdir", "/tmp"].map(OsString::from));
    args
}

/// A folder holding copies of the allowed files of `/etc` (links kept as links), removed
/// when the job's command is dropped.
struct SandboxEtc(PathBuf);

impl SandboxEtc {
    fn make() -> Option<SandboxEtc> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        SandboxEtc::sweep();
        let name = format!("fanout-etc-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let etc = SandboxEtc(std::env::temp_dir().join(name));
        std::fs::create_dir(&etc.0).ok()?;
        for name in ETC_ALLOWED {
            let host = Path::new("/etc").join(name);
            if host.symlink_metadata().is_ok() {
                copy_tree(&host, &etc.0.join(name)).ok()?;
            }
        }
        Some(etc)
    }
}

impl SandboxEtc {
    /// Removes the copies of fanout processes that have ended: a process that exits
    /// without dropping its runtime (or is killed) leaves its copy behind.
    fn sweep() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("fanout-etc-").and_then(|rest| rest.split('-').next()) else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for SandboxEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a file, a link (as a link) or a folder with everything in it.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let kind = from.symlink_metadata()?.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if kind.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// The command's whole environment: the job's `env` and `FANOUT_*`, with a PATH over the
/// system's programs and HOME and TMPDIR in the private `/tmp` unless the job sets them.
fn environment(invocation: &Invocation) -> Vec<(String, String)> {
    let mut env = invocation.env.clone();
    for (key, value) in [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp")] {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_string(), value.to_string()));
        }
    }
    env
}

/// Without a sandbox, `/in/...`, `/out/...` and `/files/...` in the command's words are the
/// staged folders and the side files' folder.
fn unsandboxed_path(word: &str, invocation: &Invocation) -> OsString {
    let folders = [
        ("/in", Some(&invocation.in_dir)),
        ("/out", Some(&invocation.out_dir)),
        ("/files", invocation.files_dir.as_ref()),
    ];
    for (inside, host) in folders.into_iter().filter_map(|(inside, host)| Some((inside, host?))) {
        if word == inside {
            return host.clone().into_os_string();
        }
        if let Some(rest) = word.strip_prefix(inside).and_then(|rest| rest.strip_prefix('/')) {
            return host.join(rest).into_os_string();
        }
    }
    word.into()
}

fn find_bwrap() -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("bwrap"))
        .find(|candidate| candidate.is_file())
        .ok_or(SandboxError::Missing)
}

/// Writes "0" (the calling process) to a cgroup's `cgroup.procs`: async-signal-safe.
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    let fd = open(procs.as_c_str(), OFlag::O_WRONLY, nix::sys::stat::Mode::empty())?;
    nix::unistd::write(&fd, b"0")?;
    Ok(())
}

/// Where fanout may make a cgroup per invocation: under its own memory and pids cgroups
/// (cgroup v1, as Docker and many VMs have), or its own cgroup v2 folder. `None` when the
/// host does not let it write there; resource limits stand in then.
struct CgroupRoot {
    memory: PathBuf,
    pids: Option<PathBuf>,
    v2: bool,
}

static CGROUP_SERIAL: AtomicU64 = AtomicU64::new(0);

impl CgroupRoot {
    fn find() -> Option<CgroupRoot> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path_of = |controller: &str| {
            own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names.split(',').any(|name| name == controller).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let writable = |dir: &Path| {
            let probe = dir.join(format!("fanout-probe-{}", std::process::id()));
            let made = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.procs").exists();
            let _ = std::fs::remove_dir(&probe);
            made
        };
        let root = if let Some(memory) = path_of("memory") {
            let memory = Path::new("/sys/fs/cgroup/memory").join(memory);
            let pids = path_of("pids").map(|pids| Path::new("/sys/fs/cgroup/pids").join(pids)).filter(|p| writable(p));
            writable(&memory).then_some(CgroupRoot { memory, pids, v2: false })
        } else {
            let unified = own.lines().find_map(|line| line.strip_prefix("0::"))?;
            let dir = Path::new("/sys/fs/cgroup").join(unified.trim_start_matches('/'));
            let controllers = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            (controllers.contains("memory") && writable(&dir)).then_some(CgroupRoot {
                memory: dir,
                pids: None,
                v2: true,
            })
        }?;
        root.sweep();
        Some(root)
    }

    /// Removes empty cgroups left by fanout processes that have ended (killed before their
    /// last removals ran).
    fn sweep(&self) {
        for dir in [Some(&self.memory), self.pids.as_ref()].into_iter().flatten() {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("fanout-").and_then(|rest| rest.split('-').next()) else { continue };
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// A fresh cgroup (a pair, on v1) with this memory cap and the process cap.
    fn make(&self, memory_bytes: u64) -> Option<Cgroup> {
        let name = format!("fanout-{}-{}", std::process::id(), CGROUP_SERIAL.fetch_add(1, Ordering::Relaxed));
        let memory = self.memory.join(&name);
        std::fs::create_dir(&memory).ok()?;
        let (limit_file, limit) = match self.v2 {
            true => ("memory.max", memory_bytes.to_string()),
            false => ("memory.limit_in_bytes", memory_bytes.to_string()),
        };
        let mut made = Cgroup { dirs: vec![memory.clone()], v2: self.v2 };
        if std::fs::write(memory.join(limit_file), limit).is_err() {
            return None;
        }
        // No swap beyond the cap, where the host counts it.
        let _ = std::fs::write(
            memory.join(if self.v2 { "memory.swap.max" } else { "memory.memsw.limit_in_bytes" }),
            if self.v2 { "0".to_string() } else { memory_bytes.to_string() },
        );
        let pids_dir = match (&self.pids, self.v2) {
            (_, true) => Some(memory),
            (Some(pids), false) => {
                let dir = pids.join(&name);
                std::fs::create_dir(&dir).ok().map(|_| {
                    made.dirs.push(dir.clone());
                    dir
                })
            }
            (None, false) => None,
        };
        if let Some(dir) = pids_dir {
            let _ = std::fs::write(dir.join("pids.max"), MAX_PROCESSES.to_string());
        }
        Some(made)
    }
}

/// One invocation's cgroups, removed when it ends.
struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|dir| CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok())
            .collect()
    }

    /// True when the kernel killed something in it for want of memory.
    fn ran_out_of_memory(&self) -> bool {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        let text = std::fs::read_to_string(self.dirs[0].join(file)).unwrap_or_default();
        text.lines().filter_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok()).any(|kills| kills > 0)
    }

    /// Removes the cgroups, now when they are empty, else once their last process is gone:
    /// a sandbox's processes end a moment after its first one (the kernel tears its PID
    /// namespace down), and the invocation must not wait for that.
    fn remove(self) {
        if !self.try_remove() {
            let _ = reaper().send(self);
        }
    }

    fn try_remove(&self) -> bool {
        self.dirs.iter().all(|dir| std::fs::remove_dir(dir).is_ok() || !dir.exists())
    }
}

/// The thread that removes cgroups whose processes were still ending.
fn reaper() -> &'static std::sync::mpsc::Sender<Cgroup> {
    static REAPER: std::sync::OnceLock<std::sync::mpsc::Sender<Cgroup>> = std::sync::OnceLock::new();
    REAPER.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<Cgroup>();
        std::thread::Builder::new()
            .name("fanout-cgroups".into())
            .spawn(move || {
                let mut waiting: Vec<(Cgroup, Instant)> = Vec::new();
                loop {
                    let next = match waiting.is_empty() {
                        true => receive.recv().map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                        false => receive.recv_timeout(std::time::Duration::from_millis(20)),
                    };
                    match next {
                        Ok(cgroup) => waiting.push((cgroup, Instant::now())),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // A cgroup that stays busy for a minute holds a process fanout could not
                    // kill; it is left for the next run's sweep rather than retried forever.
                    waiting.retain(|(cgroup, since)| !cgroup.try_remove() && since.elapsed().as_secs() < 60);
                }
            })
            .expect("a thread for cgroup removal");
        send
    })
}
