//! Python functions (`--python`): built into WebAssembly by fanout (componentize-py), they
//! give what host CPython gives for the same script, see only what the job gave them, and
//! end by exit, timeout, memory cap or exception as any guest does. A build error is one line.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const AWS_SECRET: &str = "wJalrXUtnFEMI-python-secret-77a2";

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/python").join(name)
}

/// `fanout run` of a Python function over `work/in` into `work/out`.
fn run_python(work: &Path, script: &Path, extra: &[&str]) -> Ran {
    fanout()
        .current_dir(work)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .args(["run", "--input", "in", "--python", script.to_str().unwrap(), "--output", "out"])
        .args(extra)
        .output()
        .unwrap()
        .into()
}

/// Text in a few scripts and cases, so that the word rules (letters, apostrophes, case)
/// are exercised, not only ASCII.
fn corpus(dir: &Path, files: usize) {
    let words = [
        "the",
        "The",
        "sea",
        "mer",
        "Meer",
        "naïve",
        "café",
        "don't",
        "l’été",
        "straße",
        "ΣΊΣΥΦΟΣ",
        "σοφία",
        "дом",
        "Дом",
        "水",
        "東京",
        "x2",
        "a_b",
        "fan-out",
        "42",
        "über",
        "Ünïcödé",
        "it's",
    ];
    std::fs::create_dir_all(dir).unwrap();
    for file in 0..files {
        let mut text = String::new();
        for i in 0..(200 + file * 37) {
            let word = words[(i * 7 + file * 3 + i / 5) % words.len()];
            text.push_str(word);
            text.push(if i % 11 == 10 { '\n' } else { ' ' });
        }
        std::fs::write(dir.join(format!("doc-{file:02}.txt")), text).unwrap();
    }
}

#[test]
fn a_stdlib_script_gives_the_bytes_host_cpython_gives() {
    let work = tempfile::tempdir().unwrap();
    corpus(&work.path().join("in"), 12);
    let script = repo().join("jobs/fn/wordfreq.py");
    let ran = run_python(work.path(), &script, &["--shard", "objects=3", "--json", "--", "--top", "7"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");

    let host = work.path().join("host");
    let cpython = std::process::Command::new("python3")
        .arg(&script)
        .args(["--top", "7"])
        .arg(work.path().join("in"))
        .arg(&host)
        .output()
        .unwrap();
    assert!(cpython.status.success(), "{}", String::from_utf8_lossy(&cpython.stderr));
    let mut ours = tree(&work.path().join("out"));
    ours.retain(|key, _| !key.starts_with("_fanout"));
    let theirs = tree(&host);
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (key, bytes) in &theirs {
        assert_eq!(&ours[key], bytes, "{key} differs from host CPython's");
        // The args reached the script: at most 7 words each.
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 7, "{key}");
    }
}

#[test]
fn a_python_function_sees_only_what_the_job_gave_it() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("look", "probe")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let env = format!("PORT={port}");
    std::fs::write(work.path().join("note.txt"), "a side file").unwrap();
    let extra = ["--env", &env, "--file", "note.txt=note.txt", "--", "alpha", "two words"];
    let ran = run_python(work.path(), &fixture("probe"), &extra);
    ran.assert_code(0);
    let found: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("out/look.json")).unwrap()).unwrap();
    assert_eq!(found["argv"], serde_json::json!(["main.py", "alpha", "two words"]));
    let env: BTreeMap<String, String> = serde_json::from_value(found["env"].clone()).unwrap();
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(names, ["FANOUT_ATTEMPT", "FANOUT_JOB", "FANOUT_SHARD", "FANOUT_SHARDS", "PORT"], "{env:?}");
    assert!(!found.to_string().contains(AWS_SECRET));
    // Modules beside main.py and the pure-Python requirements were bundled.
    assert_eq!(found["helper"], "IMPORTED BESIDE MAIN.PY");
    assert_eq!(found["six"], "1.16.0");
    assert_eq!(found["inputs"], serde_json::json!({"look": "probe"}));
    assert_eq!(found["files"], serde_json::json!({"note.txt": "a side file"}));
    for denied in ["passwd", "home", "tcp", "in_write", "files_write"] {
        assert!(found[denied].as_str().is_some_and(|s| s.starts_with("denied")), "{denied}: {}", found[denied]);
    }
    let root = found["root"].to_string();
    for host_dir in ["etc", "home", "root", "usr", "proc"] {
        assert!(!root.contains(&format!("\"{host_dir}\"")), "/ shows {host_dir}: {root}");
    }
    drop(listener);
}

#[test]
fn a_python_function_ends_by_exit_timeout_memory_cap_or_exception() {
    assert_ends_each_way(&fixture("probe"), "128MiB", 600);
}

/// Runs `fixture` over five inputs that each end one way (exit 3, a loop, an allocation of
/// `allocate_mb`, an exception, a probe) under `memory`, and checks each outcome and its log.
fn assert_ends_each_way(fixture: &Path, memory: &str, allocate_mb: u32) {
    let work = tempfile::tempdir().unwrap();
    let hungry = format!("allocate {allocate_mb}");
    write_files(
        &work.path().join("in"),
        &[("exit3", "exit 3"), ("loop", "loop"), ("hungry", &hungry), ("raise", "raise"), ("fine", "probe")],
    );
    let limits = ["--timeout", "3s", "--memory", memory, "--attempts", "1"];
    let ran = run_python(work.path(), fixture, &limits);
    ran.assert_code(1);
    let dest = work.path().join("out");
    let rows = rows_by_key(&dest);
    assert_eq!(rows["exit3"]["outcome"], "exit", "{:?}", rows["exit3"]);
    assert!(rows["exit3"]["error"].contains('3'), "{:?}", rows["exit3"]);
    assert_eq!(rows["loop"]["outcome"], "timeout", "{:?}", rows["loop"]);
    assert_eq!(rows["hungry"]["outcome"], "oom", "{:?}", rows["hungry"]);
    assert_eq!(rows["raise"]["outcome"], "exit", "{:?}", rows["raise"]);
    assert!(rows["raise"]["error"].contains('1'), "{:?}", rows["raise"]);
    assert_eq!(rows["fine"]["status"], "ok");
    let log = |key: &str| {
        let shard: u64 = rows[key]["shard"].parse().unwrap();
        std::fs::read_to_string(job_dir(&dest).join(format!("logs/{shard:05}.txt"))).unwrap_or_default()
    };
    assert!(log("exit3").contains("leaving with 3"), "{}", log("exit3"));
    assert!(log("raise").contains("ValueError: asked to fail"), "the traceback is in the log: {}", log("raise"));
}

#[test]
fn a_syntax_error_fails_the_build_with_one_line_naming_file_and_line() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha")]);
    let ran = run_python(work.path(), &fixture("broken.py"), &[]);
    let expected = format!("function.python: {}:3:6: '(' was never closed", fixture("broken.py").display());
    ran.assert_refused(&expected);
    assert!(!work.path().join("out").exists(), "nothing is written");
}

/// CSV files of weather-like readings, different in every file, with a few missing values.
fn readings(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for file in 0..files {
        let mut text = String::from("station,temp,rain,wind\n");
        for row in 0..(40 + file * 13) {
            let station = ["oslo", "lima", "rome", "pune"][row % 4];
            let temp = -15.0 + 50.0 * next();
            let rain = if row % 17 == 3 { String::new() } else { format!("{:.6}", 30.0 * next() * next()) };
            text.push_str(&format!("{station},{temp:.9},{rain},{}\n", (next() * 40.0) as u32));
        }
        std::fs::write(dir.join(format!("week-{file:02}.csv")), text).unwrap();
    }
}

/// Whether two JSON documents hold the same numbers, each within `relative` of the other.
fn close(ours: &serde_json::Value, theirs: &serde_json::Value, relative: f64, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match (ours, theirs) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            let scale = a.abs().max(b.abs()).max(1e-300);
            if (a - b).abs() / scale <= relative || a == b {
                Ok(())
            } else {
                Err(format!("{at}: {a} against host pandas' {b}"))
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().try_for_each(|(i, (a, b))| close(a, b, relative, &format!("{at}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) if a.keys().eq(b.keys()) => {
            a.iter().try_for_each(|(key, value)| close(value, &b[key], relative, &format!("{at}.{key}")))
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{at}: {a} against host pandas' {b}")),
    }
}

#[test]
fn a_numpy_and_pandas_script_gives_the_numbers_host_pandas_gives() {
    let work = tempfile::tempdir().unwrap();
    readings(&work.path().join("in"), 6);
    let script = fixture("stats.py");
    let ran = run_python(work.path(), &script, &["--json", "--", "/in", "/out"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 6, "{summary}");

    let host = work.path().join("host");
    let cpython =
        std::process::Command::new("python3").arg(&script).arg(work.path().join("in")).arg(&host).output().unwrap();
    assert!(cpython.status.success(), "host pandas: {}", String::from_utf8_lossy(&cpython.stderr));
    let mut ours = tree(&work.path().join("out"));
    ours.retain(|key, _| !key.starts_with("_fanout"));
    let theirs = tree(&host);
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (key, bytes) in &theirs {
        let theirs: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let ours: serde_json::Value = serde_json::from_slice(&ours[key]).unwrap();
        assert!(theirs["describe"]["temp"]["count"].as_f64().unwrap() >= 40.0, "{key}: {theirs}");
        close(&ours, &theirs, 1e-9, key).unwrap();
    }
}

#[test]
fn a_pandas_function_sees_only_what_the_job_gave_it() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("look", "probe"), ("again", "probe")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let env = format!("PORT={port}");
    std::fs::write(work.path().join("lookup.csv"), "a,b\n1,2\n").unwrap();
    let extra = ["--env", &env, "--file", "lookup.csv=lookup.csv", "--", "alpha", "two words"];
    let ran = run_python(work.path(), &fixture("scientific"), &extra);
    ran.assert_code(0);
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(work.path().join("out").join(name)).unwrap()).unwrap()
    };
    let (found, again) = (read("look.json"), read("again.json"));
    assert_eq!(found["argv"], serde_json::json!(["/app/main.py", "alpha", "two words"]));
    let env: BTreeMap<String, String> = serde_json::from_value(found["env"].clone()).unwrap();
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["FANOUT_ATTEMPT", "FANOUT_JOB", "FANOUT_SHARD", "FANOUT_SHARDS", "HOME", "PORT", "PYTHONTZPATH", "TMPDIR"],
        "{env:?}"
    );
    assert_eq!(env["HOME"], "/tmp");
    assert!(!found.to_string().contains(AWS_SECRET));
    assert_eq!(found["helper"], "IMPORTED BESIDE MAIN.PY");
    assert_eq!(found["idna"], "3.7", "a pure-Python requirement is bundled");
    assert_eq!(found["six"], "1.17.0", "a requirement the interpreter carries is the interpreter's");
    assert_eq!(found["pandas_sum"], 6);
    assert_eq!(found["inputs"], serde_json::json!({"look": "probe"}));
    assert_eq!(found["files"], serde_json::json!({"lookup.csv": "a,b\n1,2\n"}));
    for denied in ["passwd", "home", "tcp", "in_write", "app_write", "stdlib_write", "files_write"] {
        assert!(found[denied].as_str().is_some_and(|s| s.starts_with("denied")), "{denied}: {}", found[denied]);
    }
    // /tmp is writable, and each invocation's own.
    assert_eq!(found["tmp"], "kept");
    assert_eq!(found["tmp_before"], serde_json::json!([]));
    assert_eq!(again["tmp_before"], serde_json::json!([]), "one shard's /tmp is not another's");
    // Every shard starts from the same snapshot, but not with the same random numbers.
    assert_ne!(found["random"], again["random"]);
    let root = found["root"].to_string();
    for host_dir in ["etc", "home", "root", "proc", "bin"] {
        assert!(!root.contains(&format!("\"{host_dir}\"")), "/ shows {host_dir}: {root}");
    }
    drop(listener);
}

#[test]
fn a_pandas_function_ends_by_exit_timeout_memory_cap_or_exception() {
    assert_ends_each_way(&fixture("scientific"), "512MiB", 900);
}

#[test]
fn a_syntax_error_in_a_pandas_script_stops_the_job_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha")]);
    let ran = run_python(work.path(), &fixture("broken_numpy.py"), &[]);
    let expected = format!("function.python: {}:3:18: '(' was never closed", fixture("broken_numpy.py").display());
    ran.assert_refused(&expected);
    assert!(!work.path().join("out").exists(), "nothing is written");
}

#[test]
fn too_little_memory_for_pandas_is_refused_before_anything_runs() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha")]);
    let ran = run_python(work.path(), &fixture("stats.py"), &["--memory", "32MiB"]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("function.memory") && ran.stderr.contains("numpy"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    assert!(!work.path().join("out").exists(), "nothing is written");
}
