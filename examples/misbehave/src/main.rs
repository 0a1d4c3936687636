//! A hostile fanout function for tests: each input file under /in holds one command, and
//! the guest does what it says. Commands that probe the sandbox exit 0 and write what they
//! found into /out only when they broke out, so a leak shows up as a *successful* shard
//! (and a test that expects failure catches it).
//!
//! Commands: ok | work MS | nap MS | trap | exit N | loop | sleep | alloc | passwd | dotdot | env NAME |
//! sidefile NAME | symlink | slowfirst MS | latefirst MS | holdfirst | flaky | files N | bytes N | stdout N | stderr N | stdin

use std::io::{Read, Write};
use std::process::exit;

/// The WASI call behind symlink(2), made directly (std's wrapper is unstable): `/out` is
/// the second preopened folder, file descriptor 4.
#[cfg(target_arch = "wasm32")]
fn plant_symlink(target: &str, link: &str) -> u16 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn path_symlink(
            old_path: *const u8,
            old_path_len: usize,
            fd: u32,
            new_path: *const u8,
            new_path_len: usize,
        ) -> u16;
    }
    // SAFETY: both strings outlive the call, which only reads them.
    unsafe { path_symlink(target.as_ptr(), target.len(), 4, link.as_ptr(), link.len()) }
}

#[cfg(not(target_arch = "wasm32"))]
fn plant_symlink(target: &str, link: &str) -> u16 {
    std::os::unix::fs::symlink(target, format!("/out/{link}")).map(|_| 0).unwrap_or(1)
}

/// Keeps a core busy for `ms` milliseconds.
fn spin(ms: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut x: u64 = 1;
    while std::time::Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

fn leak(name: &str, what: &[u8]) -> ! {
    std::fs::write(format!("/out/{name}"), what).expect("write the leak");
    exit(0)
}

fn run(command: &str, argument: &str, name: &str) {
    match command {
        "ok" => {
            eprintln!("ok: {name}");
            std::fs::write(format!("/out/{name}.ok"), b"fine\n").expect("write /out");
        }
        "work" => {
            // Spin for N milliseconds, then write an output that depends on the input name.
            spin(argument.parse().unwrap_or(10));
            let reversed: String = name.chars().rev().collect();
            std::fs::write(format!("/out/{name}.out"), format!("{reversed}\n")).expect("write /out");
        }
        "trap" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        "exit" => exit(argument.parse().unwrap_or(3)),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
        "nap" => {
            let asked = std::time::Duration::from_millis(argument.parse().unwrap_or(100));
            let started = std::time::Instant::now();
            std::thread::sleep(asked);
            let slept = started.elapsed();
            std::fs::write(format!("/out/{name}.slept"), format!("{}\n", slept.as_millis())).expect("write /out");
            if slept < asked {
                exit(6)
            }
        }
        "alloc" => {
            // 64 MiB at a time, touched, up to 4 GiB: the memory cap must stop it.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            for _ in 0..64 {
                hoard.push(vec![1u8; 64 << 20]);
            }
            eprintln!("allocated {} MiB", hoard.len() * 64);
        }
        "passwd" => {
            for path in ["/etc/passwd", "/proc/self/environ", "/root/.aws/credentials"] {
                match std::fs::read(path) {
                    Ok(bytes) => leak("passwd-leak", &bytes),
                    Err(e) => eprintln!("denied {path}: {e}"),
                }
            }
            exit(42)
        }
        "dotdot" => {
            for path in
                ["/in/../../etc/passwd", "../etc/passwd", "/out/../../etc/passwd", "/in/../../../../../../etc/passwd"]
            {
                match std::fs::read(path) {
                    Ok(bytes) => leak("dotdot-leak", &bytes),
                    Err(e) => eprintln!("denied {path}: {e}"),
                }
            }
            match std::fs::read_dir("/") {
                Ok(entries) => {
                    let names: Vec<String> =
                        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                    if names.iter().any(|n| n == "etc" || n == "root" || n == "proc") {
                        leak("root-listing", names.join("\n").as_bytes());
                    }
                    eprintln!("/ shows {names:?}");
                }
                Err(e) => eprintln!("denied listing /: {e}"),
            }
            exit(43)
        }
        "sidefile" => {
            let path = format!("/files/{argument}");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                eprintln!("cannot read {path}: {e}");
                exit(45)
            });
            if std::fs::write(&path, b"overwritten").is_ok() || std::fs::write("/files/planted", b"x").is_ok() {
                leak("files-writable", b"a side file could be written");
            }
            std::fs::write(format!("/out/{name}.copy"), bytes).expect("write the copy");
        }
        "env" => {
            let all: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("environment: {}", all.join(" "));
            if let Ok(value) = std::env::var(argument) {
                leak("env-leak", value.as_bytes());
            }
            exit(44)
        }
        "symlink" => {
            for (target, link) in [("/etc/passwd", "link"), ("../in", "escape"), ("fine.txt", "inside")] {
                match plant_symlink(target, link) {
                    0 => eprintln!("planted /out/{link} -> {target}"),
                    errno => eprintln!("symlink /out/{link} -> {target} refused (errno {errno})"),
                }
            }
            std::fs::write("/out/fine.txt", b"a real output beside the links\n").expect("write /out");
        }
        "slowfirst" => {
            // The first attempt is a straggler (spins for N ms); any later attempt is quick.
            let attempt = std::env::var("FANOUT_ATTEMPT").unwrap_or_default();
            if attempt == "1" {
                spin(argument.parse().unwrap_or(5000));
            }
            std::fs::write(format!("/out/{name}.attempt{attempt}"), b"done\n").expect("write /out");
        }
        "latefirst" => {
            // Like slowfirst, but every attempt writes the same output, saying which attempt
            // it was: a late first attempt must never replace what a later one published.
            let attempt = std::env::var("FANOUT_ATTEMPT").unwrap_or_default();
            if attempt == "1" {
                spin(argument.parse().unwrap_or(5000));
            }
            std::fs::write(format!("/out/{name}.out"), format!("attempt {attempt}\n")).expect("write /out");
        }
        "holdfirst" => {
            // The first attempt cannot finish: it says it runs (/out/NAME.held, which a test
            // waits for before it kills or interrupts something) and spins until it is
            // killed or times out. A later attempt works as `work 0` does.
            let attempt = std::env::var("FANOUT_ATTEMPT").unwrap_or_default();
            if attempt == "1" {
                std::fs::write(format!("/out/{name}.held"), b"running\n").expect("write /out");
                run("loop", "", name);
            }
            run("work", "0", name);
        }
        "flaky" => {
            let attempt = std::env::var("FANOUT_ATTEMPT").unwrap_or_default();
            if attempt == "1" {
                eprintln!("flaky: failing attempt {attempt}");
                exit(1);
            }
            std::fs::write(format!("/out/{name}.ok"), format!("passed on attempt {attempt}\n")).expect("write /out");
        }
        "files" => {
            for i in 0..argument.parse::<u32>().unwrap_or(10_000) {
                std::fs::write(format!("/out/f{i:05}"), b"x").expect("write /out");
            }
        }
        "bytes" => {
            let total: u64 = argument.parse().unwrap_or(1 << 20);
            let mut file = std::fs::File::create(format!("/out/{name}.big")).expect("create the output");
            let block = vec![7u8; 1 << 20];
            let mut written = 0;
            while written < total {
                let n = block.len().min((total - written) as usize);
                file.write_all(&block[..n]).expect("write the output");
                written += n as u64;
            }
        }
        "stdout" => {
            let total: u64 = argument.parse().unwrap_or(1 << 20);
            let block = vec![b'o'; 1 << 16];
            let mut out = std::io::stdout().lock();
            let mut written = 0;
            while written < total {
                if out.write_all(&block).is_err() {
                    exit(5);
                }
                written += block.len() as u64;
            }
        }
        "stderr" => {
            let total: u64 = argument.parse().unwrap_or(1 << 20);
            let block = vec![b'e'; 1 << 16];
            let mut err = std::io::stderr().lock();
            let mut written = 0;
            while written < total {
                let _ = err.write_all(&block);
                written += block.len() as u64;
            }
        }
        "stdin" => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data).expect("read stdin");
            std::fs::write(format!("/out/{name}.stdin"), &data).expect("write /out");
        }
        other => {
            eprintln!("misbehave: unknown command {other:?}");
            exit(99)
        }
    }
}

/// Every file under `dir`, sorted, as (name relative to /in, path).
fn inputs(dir: &std::path::Path, relative: &str, found: &mut Vec<(String, std::path::PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read /in").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{relative}{}", entry.file_name().to_string_lossy());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            inputs(&entry.path(), &format!("{name}/"), found);
        } else {
            found.push((name, entry.path()));
        }
    }
}

fn main() {
    let mut found = Vec::new();
    inputs(std::path::Path::new("/in"), "", &mut found);
    for (name, path) in found {
        let text = std::fs::read_to_string(&path).expect("read the command");
        let mut words = text.split_whitespace();
        let command = words.next().unwrap_or("ok");
        let argument = words.next().unwrap_or("");
        // outputs are flat: nested inputs write `a-b` for `a/b`
        run(command, argument, &name.replace('/', "-"));
    }
}
