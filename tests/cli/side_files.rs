//! Side files (`--file NAME=PATH`, `files = {...}`): every kind of function reads them at
//! `/files/NAME` and none can change them; a missing one stops the job before anything runs.

use crate::common::*;
use std::path::Path;

/// A side file with bytes no text tool would make up: every byte value, twice.
fn note(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let path = dir.join("note.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn run(work: &Path, args: &[&str]) -> Ran {
    fanout().current_dir(work).args(["run", "--input", "in", "--output", "out"]).args(args).output().unwrap().into()
}

#[test]
fn a_wasm_function_reads_side_files_and_cannot_change_them() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("copy", "sidefile note.bin")]);
    let (path, bytes) = note(work.path());
    let file = format!("note.bin={}", path.display());
    let misbehave = function("misbehave");
    run(work.path(), &["--function", misbehave.to_str().unwrap(), "--file", &file]).assert_code(0);
    assert_eq!(std::fs::read(work.path().join("out/copy.copy")).unwrap(), bytes);
    assert!(!work.path().join("out/files-writable").exists());
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the user's file is untouched");
}

#[test]
fn a_native_command_reads_side_files_and_cannot_change_them() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha")]);
    let (path, bytes) = note(work.path());
    let file = format!("note.bin={}", path.display());
    let script = "cat /files/note.bin > /out/copy.bin; if echo x > /files/note.bin || touch /files/planted; \
                  then echo leak > /out/leak; fi";
    let command = format!("sh -c '{script}'");
    run(work.path(), &["--command", &command, "--file", &file]).assert_code(0);
    assert_eq!(std::fs::read(work.path().join("out/copy.bin")).unwrap(), bytes);
    assert!(!work.path().join("out/leak").exists(), "a side file was writable");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Without a sandbox, /files/... in the command's words is the side files' folder.
    let plain = tempfile::tempdir().unwrap();
    write_files(&plain.path().join("in"), &[("a.txt", "alpha")]);
    let ran =
        run(plain.path(), &["--command", "cp /files/note.bin {out}/copy.bin", "--file", &file, "--sandbox", "none"]);
    ran.assert_code(0);
    assert_eq!(std::fs::read(plain.path().join("out/copy.bin")).unwrap(), bytes);
}

#[test]
fn a_side_file_job_file_table_and_its_mistakes() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("copy", "sidefile schema.json")]);
    std::fs::write(work.path().join("schema.json"), "{\"type\": \"object\"}").unwrap();
    let misbehave = function("misbehave");
    let job = format!(
        "[input]\nsource = \"in/\"\n[function]\nwasm = \"{}\"\nfiles = {{ \"schema.json\" = \"schema.json\" }}\n\
         [output]\ndest = \"out/\"\n",
        misbehave.display()
    );
    std::fs::write(work.path().join("job.toml"), &job).unwrap();
    run_in(work.path(), &["run", "job.toml"]).assert_code(0);
    assert_eq!(std::fs::read_to_string(work.path().join("out/copy.copy")).unwrap(), "{\"type\": \"object\"}");

    // A changed side file is a different job: resuming the stored one is refused.
    std::fs::write(work.path().join("schema.json"), "{}").unwrap();
    run_in(work.path(), &["run", "job.toml", "--resume"]).assert_refused("function.files differs");

    let missing = job.replace("= \"schema.json\" }", "= \"gone.json\" }");
    std::fs::write(work.path().join("missing.toml"), missing).unwrap();
    let ran = run_in(work.path(), &["run", "missing.toml"]);
    ran.assert_refused("function.files.schema.json:");
    assert!(ran.stderr.contains("gone.json does not exist"), "{}", ran.stderr);

    // A --file flag overrides the job file's side file of the same name, as every flag
    // overrides its field; one name given twice by flags is a mistake.
    std::fs::write(work.path().join("other.json"), "{\"type\": \"array\"}").unwrap();
    std::fs::remove_dir_all(work.path().join("out")).unwrap();
    run_in(work.path(), &["run", "job.toml", "--file", "schema.json=other.json"]).assert_code(0);
    assert_eq!(std::fs::read_to_string(work.path().join("out/copy.copy")).unwrap(), "{\"type\": \"array\"}");
    let twice = ["run", "job.toml", "--file", "schema.json=other.json", "--file", "schema.json=schema.json"];
    run_in(work.path(), &twice).assert_refused("is given twice");

    let fresh = tempfile::tempdir().unwrap();
    write_files(&fresh.path().join("in"), &[("a", "ok")]);
    for (flag, named) in [("a/b=schema.json", "is not a file name"), ("schema.json", "is not NAME=PATH")] {
        run(fresh.path(), &["--function", misbehave.to_str().unwrap(), "--file", flag]).assert_refused(named);
        assert!(!fresh.path().join("out").exists(), "{flag}: nothing is written");
    }
}
