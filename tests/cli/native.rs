//! Native commands (`--command`) under bubblewrap: real tools give what they give when run
//! directly, a hostile command gets nothing of the host, and the timeout, memory cap and
//! exit codes end a command the way they end a WebAssembly guest.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const AWS_SECRET: &str = "wJalrXUtnFEMI-native-secret-51d0";

/// `fanout run` of a native command over `work/in` into `work/out`.
fn run_command(work: &Path, command: &str, extra: &[&str]) -> Ran {
    fanout()
        .current_dir(work)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .args(["run", "--input", "in", "--command", command, "--output", "out"])
        .args(extra)
        .output()
        .unwrap()
        .into()
}

/// A picture's pixels, decoded (8-bit RGBA), with its size.
fn decoded(path: &Path) -> Vec<u8> {
    let picture = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (width, height) = (picture.width(), picture.height());
    let mut pixels = picture.to_rgba8().into_raw();
    pixels.extend(width.to_le_bytes().into_iter().chain(height.to_le_bytes()));
    pixels
}

/// What the hostile command tries, in Python, writing what it found to /out.
const HOSTILE: &str = r#"
import json, os, socket, sys
found = dict()
def attempt(name, f):
    try:
        found[name] = f()
    except Exception as e:
        found[name] = "denied: " + type(e).__name__
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("passwd", lambda: open("/etc/passwd").read())
attempt("root", lambda: os.listdir("/root"))
attempt("home", lambda: os.listdir("/home"))
attempt("env", lambda: dict(os.environ))
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close() or "connected")
attempt("tmp", lambda: open("/tmp/x", "w").write("x"))
attempt("usr", lambda: open("/usr/x", "w").write("x"))
attempt("in_write", lambda: open(sys.argv[1], "a").write("x"))
attempt("processes", lambda: len([p for p in os.listdir("/proc") if p.isdigit()]))
attempt("uid", lambda: os.getuid())
children = 0
try:
    while children < 5000:
        if os.fork() == 0:
            import time
            time.sleep(3)
            os._exit(0)
        children += 1
except OSError as e:
    found["forks_stopped"] = type(e).__name__
found["forks"] = children
json.dump(found, open("/out/" + os.path.basename(sys.argv[1]) + ".json", "w"))
"#;

#[test]
fn a_hostile_command_gets_nothing_of_the_host_and_its_output_is_published() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("probe.txt", "hello")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let words = ["python3".to_string(), "-c".into(), HOSTILE.into(), "{in}".into(), port];
    let job = work.path().join("job.toml");
    let toml_words = words.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        &job,
        format!(
            "[input]\nsource = \"in\"\n[function]\ncommand = [{toml_words}]\nenv = {{ GIVEN = \"yes\" }}\n\
             timeout = \"60s\"\n[output]\ndest = \"out\"\n"
        ),
    )
    .unwrap();
    let ran: Ran = fanout()
        .current_dir(work.path())
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .args(["run", "job.toml"])
        .output()
        .unwrap()
        .into();
    ran.assert_code(0);
    let found: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("out/probe.txt.json")).unwrap()).unwrap();
    let denied = |name: &str| found[name].as_str().is_some_and(|s| s.starts_with("denied"));
    for name in ["shadow", "passwd", "root", "home", "tcp", "usr", "in_write"] {
        assert!(denied(name), "{name} should be denied: {found}");
    }
    assert_eq!(found["tmp"], 1, "a private /tmp is writable: {found}");
    let env = found["env"].as_object().unwrap();
    assert_eq!(env["GIVEN"], "yes");
    assert!(env.contains_key("FANOUT_SHARD"), "{env:?}");
    assert!(!found["env"].to_string().contains(AWS_SECRET), "the coordinator's credentials leaked: {env:?}");
    // PWD is the sandbox's working folder (bubblewrap's --chdir); LC_CTYPE is set by Python
    // itself at start-up in the C locale (PEP 538).
    let allowed = ["GIVEN", "PATH", "HOME", "TMPDIR", "PWD", "LC_CTYPE"];
    assert!(env.keys().all(|k| k.starts_with("FANOUT_") || allowed.contains(&k.as_str())), "{env:?}");
    assert!(found["processes"].as_u64().unwrap() <= 3, "sees only its own processes: {found}");
    assert_eq!(found["uid"], 65534, "{found}");
    assert!(found["forks"].as_u64().unwrap() < 5000, "forking is capped: {found}");
}

#[test]
fn imagemagick_through_the_sandbox_matches_imagemagick_run_directly() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for image in ["astronaut.png", "chelsea_q90.jpg", "coffee.png", "logo.png"] {
        std::fs::copy(repo().join("examples/data/images").join(image), input.join(image)).unwrap();
    }
    let command = "convert {in} -resize 64x64 -strip {out}/{stem}.png";
    run_command(work.path(), command, &[]).assert_code(0);
    let direct = work.path().join("direct");
    std::fs::create_dir_all(&direct).unwrap();
    for image in ["astronaut", "chelsea_q90", "coffee", "logo"] {
        let source = std::fs::read_dir(&input)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_stem().unwrap() == image)
            .unwrap();
        let status = Command::new("convert")
            .arg(&source)
            .args(["-resize", "64x64", "-strip"])
            .arg(direct.join(format!("{image}.png")))
            .status()
            .unwrap();
        assert!(status.success());
        let (ours, theirs) = (work.path().join(format!("out/{image}.png")), direct.join(format!("{image}.png")));
        let (a, b) = (decoded(&ours), decoded(&theirs));
        assert!(a.len() > 64, "{image}: decoded nothing");
        assert!(a == b, "{image}: the sandboxed convert's pixels differ from convert's own");
    }
}

#[test]
fn a_timeout_kills_the_whole_tree_and_an_exit_code_and_the_memory_cap_are_their_own_outcomes() {
    let work = tempfile::tempdir().unwrap();
    // Sleeps no other test starts: this test's process id makes their durations its own.
    let sleep = format!("sleep {}", 100_000 + std::process::id());
    let sleepy = format!("{sleep}1 & {sleep}2 & {sleep}3");
    write_files(
        &work.path().join("in"),
        &[
            ("sleepy", sleepy.as_str()),
            ("exit3", "echo 'it went wrong' >&2; exit 3"),
            ("hungry", "exec python3 -c 'x = bytearray(600 << 20); print(len(x))'"),
            ("fine", "echo fine > /out/fine.txt"),
        ],
    );
    let ran = run_command(work.path(), "sh {in}", &["--timeout", "2s", "--memory", "128MiB", "--attempts", "1"]);
    ran.assert_code(1);
    let rows = rows_by_key(&work.path().join("out"));
    assert_eq!(rows["sleepy"]["outcome"], "timeout", "{:?}", rows["sleepy"]);
    assert_eq!(rows["exit3"]["outcome"], "exit", "{:?}", rows["exit3"]);
    assert!(rows["exit3"]["error"].contains('3'), "{:?}", rows["exit3"]);
    assert_eq!(rows["hungry"]["outcome"], "oom", "{:?}", rows["hungry"]);
    assert_eq!(rows["fine"]["status"], "ok");
    assert_eq!(std::fs::read_to_string(work.path().join("out/fine.txt")).unwrap(), "fine\n");
    let shard: u64 = rows["exit3"]["shard"].parse().unwrap();
    let log = std::fs::read_to_string(job_dir(&work.path().join("out")).join(format!("logs/{shard:05}.txt")))
        .unwrap_or_default();
    assert!(log.contains("it went wrong"), "stderr is in the log: {log}");
    // The sandbox's processes die with its first one; the kernel takes a moment to end them.
    eventually("no sleep outlives the timeout", Duration::from_secs(5), Duration::from_millis(50), || {
        Command::new("pgrep").args(["-f", &format!("{sleep}[123]")]).output().unwrap().stdout.is_empty()
    });
}

#[test]
fn sandbox_none_runs_with_host_paths_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha")]);
    let ran = run_command(work.path(), "cp {in} {out}/{stem}.copy", &["--sandbox", "none", "--json"]);
    ran.assert_code(0);
    assert_eq!(std::fs::read_to_string(work.path().join("out/a.copy")).unwrap(), "alpha");
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["function"]["sandbox"], "none", "{summary}");
    assert_eq!(summary["function"]["kind"], "native", "{summary}");
    let document = std::fs::read_to_string(job_dir(&work.path().join("out")).join("job.json")).unwrap();
    assert!(document.contains("\"sandbox\": \"none\""), "{document}");
}

#[test]
fn bad_native_jobs_exit_2_with_one_line_naming_the_field() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "alpha"), ("b.txt", "beta")]);
    let wasm = function("wordcount");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--command", "cat {in}", "--function", wasm.to_str().unwrap()], "not both"),
        (vec!["--command", "cat {input}"], "{input}"),
        (vec!["--command", "cat {in}", "--shard", "objects=2"], "input.shard"),
        (vec!["--command", "cat {in}", "--sandbox", "docker"], "\"docker\" is not a sandbox"),
        (vec!["--command", "cat 'unclosed"], "unclosed quote"),
    ];
    for (args, expected) in cases {
        let ran: Ran = fanout()
            .current_dir(work.path())
            .args(["run", "--input", "in", "--output", "out"])
            .args(&args)
            .output()
            .unwrap()
            .into();
        ran.assert_refused(expected);
        assert!(!work.path().join("out").exists(), "{args:?}: nothing is written");
    }
}

/// Runs `program args` on the host, asserting it succeeded.
fn host(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ffmpeg_through_the_sandbox_decodes_the_frames_ffmpeg_run_directly_decodes() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Two real encodings, made here by ffmpeg's own encoders: H.264 in MP4, MPEG-4 in AVI.
    for (name, codec) in [("bars.mp4", "libx264"), ("gradient.avi", "mpeg4")] {
        let source =
            if name.starts_with("bars") { "testsrc2=size=320x240:rate=10" } else { "gradients=s=320x240:r=10" };
        let path = input.join(name);
        host(
            "ffmpeg",
            &[
                "-nostdin",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                source,
                "-t",
                "2",
                "-c:v",
                codec,
                path.to_str().unwrap(),
            ],
        );
    }
    // Quoted as in a shell: a backslash outside quotes escapes the next character.
    let frames = "-vf 'select=not(mod(n\\,5)),scale=80:-2' -fps_mode vfr -threads 1";
    let command = format!("ffmpeg -nostdin -loglevel error -i {{in}} {frames} {{out}}/{{stem}}-%02d.png");
    run_command(work.path(), &command, &[]).assert_code(0);
    let direct = work.path().join("direct");
    std::fs::create_dir_all(&direct).unwrap();
    for stem in ["bars", "gradient"] {
        let source = std::fs::read_dir(&input)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_stem().unwrap() == stem)
            .unwrap();
        let pattern = direct.join(format!("{stem}-%02d.png"));
        let mut args = vec!["-nostdin", "-loglevel", "error", "-i", source.to_str().unwrap()];
        args.extend(["-vf", "select=not(mod(n\\,5)),scale=80:-2", "-fps_mode", "vfr", "-threads", "1"]);
        args.push(pattern.to_str().unwrap());
        host("ffmpeg", &args);
    }
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".png"))
            .collect();
        names.sort();
        names
    };
    let ours = names(&work.path().join("out"));
    assert_eq!(ours, names(&direct), "the same frames");
    assert_eq!(ours.len(), 8, "4 frames of each 2 s clip: {ours:?}");
    for name in ours {
        let (a, b) = (decoded(&work.path().join("out").join(&name)), decoded(&direct.join(&name)));
        assert!(a.len() > 80 * 60 * 3, "{name}: decoded nothing");
        assert!(a == b, "{name}: the sandboxed ffmpeg's frame differs from ffmpeg's own");
    }
}

#[test]
fn tesseract_through_the_sandbox_reads_a_rendered_page_as_tesseract_run_directly() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // A real page: the first page of a manual, rendered by poppler at 150 dpi, grey.
    let pdf = repo().join("examples/data/pdfs/dot.1.pdf");
    let page = input.join("page");
    host(
        "pdftoppm",
        &[
            "-f",
            "1",
            "-l",
            "1",
            "-r",
            "150",
            "-gray",
            "-png",
            "-singlefile",
            pdf.to_str().unwrap(),
            page.to_str().unwrap(),
        ],
    );
    let command = "tesseract {in} {out}/{stem} --psm 3";
    let ran = fanout()
        .current_dir(work.path())
        .args(["run", "--input", "in", "--command", command, "--env", "OMP_THREAD_LIMIT=1", "--output", "out"])
        .output()
        .unwrap();
    Ran::from(ran).assert_code(0);
    let direct = work.path().join("direct");
    let out = Command::new("tesseract")
        .env("OMP_THREAD_LIMIT", "1")
        .arg(input.join("page.png"))
        .arg(&direct)
        .args(["--psm", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours = std::fs::read_to_string(work.path().join("out/page.txt")).unwrap();
    let theirs = std::fs::read_to_string(direct.with_extension("txt")).unwrap();
    assert!(ours.to_lowercase().contains("graph"), "tesseract read the page: {ours}");
    assert_eq!(ours, theirs, "the sandboxed tesseract reads what tesseract reads");
}

#[test]
fn record_shards_reach_a_command_on_stdin_and_its_stdout_is_the_part_file() {
    let work = tempfile::tempdir().unwrap();
    let csv = repo().join("examples/data/cities.csv");
    let ran = fanout()
        .current_dir(work.path())
        .args(["run", "--input", csv.to_str().unwrap(), "--shard", "rows=4", "--command", "tr a-z A-Z"])
        .args(["--output", "out", "--json"])
        .output()
        .unwrap();
    let ran = Ran::from(ran);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 3, "10 rows, 4 a shard: {summary}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let (header, rows) = text.split_once('\n').unwrap();
    let mut parts: Vec<_> = std::fs::read_dir(work.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    parts.sort();
    let mut seen = String::new();
    for part in &parts {
        let part = std::fs::read_to_string(part).unwrap();
        let (part_header, part_rows) = part.split_once('\n').unwrap();
        assert_eq!(part_header, header.to_ascii_uppercase(), "each shard starts with the header row");
        seen.push_str(part_rows);
    }
    // tr maps ASCII only: "São Paulo" keeps its ã, byte for byte.
    assert_eq!(seen, rows.to_ascii_uppercase(), "every row, once, in order, through tr");
}
