//! The data-processing jobs of `jobs/`: OCR and video transcoding (native tools in the
//! sandbox), loudness normalization and record validation (wasm functions), each run as a
//! user runs it and checked against an independent reference: OCR against the text a page
//! was drawn with, video with ffprobe and ffmpeg's PSNR, audio with ffmpeg's loudness meter,
//! records against Python's `jsonschema`.

use crate::common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// `fanout run JOB --input IN --output OUT [-- ARGS]` from the repository, as the README shows.
fn run_job(job: &str, input: &Path, output: &Path, args: &[&str]) -> Ran {
    let mut command = fanout();
    command.current_dir(repo()).args(["run", job, "--input"]).arg(input).arg("--output").arg(output).arg("-q");
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    command.output().unwrap().into()
}

/// Words as OCR is scored: lower case, letters and digits only.
fn words(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// The harmonic mean of the word precision and recall of `read` against `truth`.
fn word_f1(read: &str, truth: &str) -> f64 {
    let (read, truth) = (words(read), words(truth));
    let common: usize = read.iter().map(|(word, n)| (*n).min(truth.get(word).copied().unwrap_or(0))).sum();
    let (found, expected): (usize, usize) = (read.values().sum(), truth.values().sum());
    if common == 0 {
        return 0.0;
    }
    let (precision, recall) = (common as f64 / found as f64, common as f64 / expected as f64);
    2.0 * precision * recall / (precision + recall)
}

/// The logs of the shards that failed, by report.csv.
fn failed_logs(dest: &Path) -> Vec<String> {
    let job = job_dir(dest);
    report(&job)
        .iter()
        .filter(|row| row["status"] != "ok")
        .map(|row| {
            let shard: u64 = row["shard"].parse().unwrap();
            std::fs::read_to_string(job.join(format!("logs/{shard:05}.txt"))).unwrap()
        })
        .collect()
}

/// Renders the scan-like pages of tests/fixtures/ocr into `scans`, their text into `truth`.
fn render_pages(scans: &Path, truth: &Path) {
    let status = Command::new("python3")
        .arg(repo().join("tests/fixtures/ocr/render_pages.py"))
        .args([scans, truth])
        .status()
        .unwrap();
    assert!(status.success(), "render_pages.py failed");
}

#[test]
fn the_ocr_job_reads_scans_in_every_format_and_fails_only_a_broken_one() {
    let work = tempfile::tempdir().unwrap();
    let (scans, truth, out) = (work.path().join("scans"), work.path().join("truth"), work.path().join("out"));
    render_pages(&scans, &truth);
    std::fs::write(scans.join("torn.png"), b"\x89PNG\r\n\x1a\nnot the rest of a picture").unwrap();
    std::fs::write(scans.join("blank.jpg"), b"").unwrap();
    let ran = run_job("jobs/ocr.toml", &scans, &out, &[]);
    ran.assert_code(1);
    let failed = failed_logs(&out);
    assert_eq!(failed.len(), 2, "only the broken scans fail: {failed:?}");
    for name in ["torn.png", "blank.jpg"] {
        assert!(
            failed.iter().any(|log| log.contains(name)),
            "{name}'s shard failed with tesseract's reason: {failed:?}"
        );
    }
    for stem in ["minutes", "bread", "geese", "contract"] {
        let read = std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap();
        let expected = std::fs::read_to_string(truth.join(format!("{stem}.txt"))).unwrap();
        let f1 = word_f1(&read, &expected);
        assert!(f1 >= 0.9, "{stem}: word F1 {f1:.3}\n--- read\n{read}\n--- truth\n{expected}");
    }
    // The two pages of the PDF are read in order, a form feed apart.
    let contract = std::fs::read_to_string(out.join("contract.txt")).unwrap();
    let (first, second) = contract.split_once('\u{c}').expect("two pages");
    assert!(first.contains("contract") && second.contains("lighthouse"), "{contract}");
}

#[test]
fn the_ocr_job_reads_a_real_documents_page_as_pdftotext_reads_its_text_layer() {
    // A real man page (graphviz's dot.1, typeset by groff), rasterized at 200 dpi in grey as a
    // scanner would; its text layer is the reference. (No scanned paper ships with Debian.)
    let work = tempfile::tempdir().unwrap();
    let (scans, out) = (work.path().join("scans"), work.path().join("out"));
    std::fs::create_dir_all(&scans).unwrap();
    let pdf = repo().join("examples/data/pdfs/dot.1.pdf");
    let rendered = Command::new("pdftoppm")
        .args(["-r", "200", "-gray", "-f", "1", "-l", "1", "-singlefile", "-png"])
        .arg(&pdf)
        .arg(scans.join("dot"))
        .status()
        .unwrap();
    assert!(rendered.success());
    let truth = Command::new("pdftotext").args(["-f", "1", "-l", "1"]).arg(&pdf).arg("-").output().unwrap();
    run_job("jobs/ocr.toml", &scans, &out, &[]).assert_code(0);
    let read = std::fs::read_to_string(out.join("dot.txt")).unwrap();
    let f1 = word_f1(&read, &String::from_utf8_lossy(&truth.stdout));
    assert!(f1 >= 0.95, "word F1 {f1:.3}\n{read}");
}

#[test]
fn the_ocr_job_writes_a_searchable_pdf_and_hocr_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let (scans, truth, out) = (work.path().join("scans"), work.path().join("truth"), work.path().join("out"));
    render_pages(&scans, &truth);
    for other in ["bread.jpg", "geese.tiff"] {
        std::fs::remove_file(scans.join(other)).unwrap();
    }
    run_job("jobs/ocr.toml", &scans, &out, &["txt", "pdf", "hocr"]).assert_code(0);
    for (stem, pages) in [("minutes", 1), ("contract", 2)] {
        let pdf = out.join(format!("{stem}.pdf"));
        let info = Command::new("pdfinfo").arg(&pdf).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.lines().any(|l| l.starts_with("Pages:") && l.ends_with(&format!(" {pages}"))), "{info}");
        // Searchable: the PDF's own text layer holds what the page says.
        // -raw: in content-stream order; the text layer's glyphs are invisible and laid over
        // the scan word by word, which pdftotext's layout analysis would tear apart.
        let text = Command::new("pdftotext").arg("-raw").arg(&pdf).arg("-").output().unwrap();
        let expected = std::fs::read_to_string(truth.join(format!("{stem}.txt"))).unwrap();
        let f1 = word_f1(&String::from_utf8_lossy(&text.stdout), &expected);
        assert!(f1 >= 0.9, "{stem}.pdf: word F1 {f1:.3}");
        let hocr = std::fs::read_to_string(out.join(format!("{stem}.hocr"))).unwrap();
        assert_eq!(hocr.matches("class='ocr_page'").count(), pages, "{stem}.hocr");
        assert!(hocr.matches("class='ocrx_word'").count() > 20, "{stem}.hocr has words");
        assert!(out.join(format!("{stem}.txt")).is_file());
    }
}

/// Makes a clip with ffmpeg's test sources: `video` a lavfi source, with a tone unless silent.
fn make_clip(path: &Path, video: &str, seconds: u32, sound: bool, codec: &[&str]) {
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", video]);
    if sound {
        command.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    }
    command.args(["-t", &seconds.to_string()]).args(codec).arg(path);
    assert!(command.status().unwrap().success(), "ffmpeg made {}", path.display());
}

/// ffprobe's view of a file's streams: (codec_type, codec_name, width, height, frames).
fn streams(path: &Path) -> Vec<(String, String, u32, u32, u64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let number = |field: &str| s[field].as_u64().or_else(|| s[field].as_str()?.parse().ok()).unwrap_or(0);
            (
                s["codec_type"].as_str().unwrap().to_string(),
                s["codec_name"].as_str().unwrap().to_string(),
                number("width") as u32,
                number("height") as u32,
                number("nb_read_frames"),
            )
        })
        .collect()
}

/// ffmpeg's PSNR of `encoded` against `source` scaled to the same size, in dB.
fn psnr(encoded: &Path, source: &Path, width: u32, height: u32) -> f64 {
    let graph = format!("[1:v]scale={width}:{height}:flags=bicubic[ref];[0:v][ref]psnr");
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-i"])
        .arg(encoded)
        .arg("-i")
        .arg(source)
        .args(["-lavfi", &graph, "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let average = log.lines().rev().find_map(|line| line.split("average:").nth(1)).expect("ffmpeg's psnr line");
    average.split_whitespace().next().unwrap().parse().unwrap_or(f64::INFINITY)
}

#[test]
fn the_transcode_job_makes_720_line_h264_with_a_poster_and_fails_only_a_broken_file() {
    let work = tempfile::tempdir().unwrap();
    let (videos, out) = (work.path().join("videos"), work.path().join("out"));
    std::fs::create_dir_all(&videos).unwrap();
    let h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"];
    // (file, source, its size, sound): downscaled, portrait, never upscaled, silent.
    let clips = [
        ("wide.mov", "testsrc2=size=1920x1080:rate=25", (1920, 1080), true),
        ("tall.mkv", "testsrc2=size=720x1280:rate=30", (720, 1280), true),
        ("small.avi", "smptebars=size=320x240:rate=25", (320, 240), false),
    ];
    for (name, source, _, sound) in clips {
        let codec: &[&str] = if name.ends_with(".avi") { &["-c:v", "mpeg4", "-q:v", "2"] } else { &h264 };
        make_clip(&videos.join(name), source, 2, sound, codec);
    }
    std::fs::write(videos.join("torn.mp4"), b"\0\0\0\x18ftypmp42 and then nothing a player could read").unwrap();
    run_job("jobs/transcode.toml", &videos, &out, &[]).assert_code(1);
    let failed = failed_logs(&out);
    assert!(
        failed.len() == 1 && failed[0].contains("/in/torn.mp4 is not a video"),
        "only the broken file fails: {failed:?}"
    );
    for (name, _, (width, height), sound) in clips {
        let stem = name.split('.').next().unwrap();
        let (mp4, source) = (out.join(format!("{stem}.mp4")), videos.join(name));
        let found = streams(&mp4);
        let expected_height = height.min(720);
        let video = found.iter().find(|s| s.0 == "video").unwrap_or_else(|| panic!("{stem}: {found:?}"));
        assert_eq!((video.1.as_str(), video.3), ("h264", expected_height), "{stem}: {found:?}");
        let aspect = |w: u32, h: u32| w as f64 / h as f64;
        assert!((aspect(video.2, video.3) - aspect(width, height)).abs() < 0.01, "{stem}: aspect kept: {found:?}");
        let source_frames = streams(&source).iter().find(|s| s.0 == "video").unwrap().4;
        assert!(video.4.abs_diff(source_frames) <= 1, "{stem}: {} frames of {source_frames}", video.4);
        let audio: Vec<&str> = found.iter().filter(|s| s.0 == "audio").map(|s| s.1.as_str()).collect();
        assert_eq!(audio, if sound { vec!["aac"] } else { vec![] }, "{stem}: sound kept, none invented");
        let quality = psnr(&mp4, &source, video.2, video.3);
        assert!(quality >= 35.0, "{stem}: PSNR {quality:.1} dB");
        // +faststart: the index comes before the media, so a browser can start at once.
        let bytes = std::fs::read(&mp4).unwrap();
        let at = |atom: &[u8]| bytes.windows(4).position(|w| w == atom).unwrap();
        assert!(at(b"moov") < at(b"mdat"), "{stem}: moov first");
        let poster = image::open(out.join(format!("{stem}.jpg"))).unwrap();
        assert_eq!((poster.width(), poster.height()), (video.2, video.3), "{stem}: the poster's size");
    }
}

#[test]
fn the_transcode_job_makes_webm_or_extracts_the_sound_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let (videos, out_webm, out_audio) = (work.path().join("v"), work.path().join("webm"), work.path().join("audio"));
    std::fs::create_dir_all(&videos).unwrap();
    let codec = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"];
    make_clip(&videos.join("clip.mp4"), "testsrc2=size=640x360:rate=25", 2, true, &codec);
    run_job("jobs/transcode.toml", &videos, &out_webm, &["--webm", "--height", "240"]).assert_code(0);
    let found = streams(&out_webm.join("clip.webm"));
    let kinds: Vec<(&str, &str, u32)> = found.iter().map(|s| (s.0.as_str(), s.1.as_str(), s.3)).collect();
    assert_eq!(kinds, [("video", "vp9", 240), ("audio", "opus", 0)], "{found:?}");
    run_job("jobs/transcode.toml", &videos, &out_audio, &["--audio-only"]).assert_code(0);
    let found = streams(&out_audio.join("clip.m4a"));
    assert_eq!(found.iter().map(|s| (s.0.as_str(), s.1.as_str())).collect::<Vec<_>>(), [("audio", "aac")]);
    assert!(!out_audio.join("clip.jpg").exists(), "no poster for sound alone");
    let ran = run_job("jobs/transcode.toml", &videos, &work.path().join("bad"), &["--height", "tall"]);
    ran.assert_code(1);
    let log = std::fs::read_to_string(job_dir(&work.path().join("bad")).join("logs/00000.txt")).unwrap();
    assert!(log.contains("--height wants a number of lines, not tall"), "{log}");
}
