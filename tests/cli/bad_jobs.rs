//! The catalogue of bad job files in `tests/fixtures/bad-jobs/`: each `NAME.toml` sits beside
//! `NAME.err`, the exact error fanout must print. Each must exit 2 and write nothing.
//! `FANOUT_BLESS=1 cargo test bad_jobs` rewrites the `.err` files from what fanout prints now
//! (then read every changed one before committing it).

use crate::common::*;
use std::path::Path;

/// The folder every fixture runs in: a small valid input, an empty folder, and functions.
fn setup(dir: &Path) {
    write_files(
        dir,
        &[("in/a.txt", "hello\n"), ("in/b.txt", "world\n"), ("notwasm.wasm", "this is text, not WebAssembly\n")],
    );
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::copy(function("noop"), dir.join("noop.wasm")).unwrap();
    // A module that asks the host for something fanout does not provide.
    let module = wat::parse_str(r#"(module (import "env" "host_secret" (func)) (func (export "_start")))"#).unwrap();
    std::fs::write(dir.join("badimport.wasm"), module).unwrap();
    // A component that imports an interface no WASI host provides.
    let component =
        wat::parse_str(r#"(component (import "fanout:test/secrets" (instance (export "read" (func)))))"#).unwrap();
    std::fs::write(dir.join("badcomponent.wasm"), component).unwrap();
}

#[test]
fn every_bad_job_file_is_refused_with_its_exact_error_and_writes_nothing() {
    let fixtures = repo().join("tests/fixtures/bad-jobs");
    let bless = std::env::var_os("FANOUT_BLESS").is_some();
    let mut names: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "the catalogue holds {} bad inputs", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let work = tempfile::tempdir().unwrap();
        setup(work.path());
        let file = format!("{name}.toml");
        std::fs::copy(fixtures.join(&file), work.path().join(&file)).unwrap();
        let before = tree(work.path());
        let ran = fanout()
            .current_dir(work.path())
            .env("FANOUT_CACHE_DIR", work.path().join(".cache"))
            .args(["run", &file])
            .output()
            .unwrap();
        let ran = Ran::from(ran);
        let cwd = work.path().canonicalize().unwrap();
        let printed = ran.stderr.replace(cwd.to_str().unwrap(), "{cwd}");
        let expected_path = fixtures.join(format!("{name}.err"));
        if bless {
            std::fs::write(&expected_path, &printed).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if ran.code != 2 {
            failures.push(format!("{name}: exit {} (expected 2)\n{}", ran.code, ran.stderr));
        } else if printed != expected {
            failures.push(format!("{name}: printed\n{printed}expected\n{expected}"));
        }
        let mut after = tree(work.path());
        after.retain(|path, _| !path.starts_with(".cache/"));
        if after != before {
            let new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
            failures.push(format!("{name}: wrote {new:?}"));
        }
        assert!(!work.path().join("out").exists(), "{name}: created out/");
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures misbehaved:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}
