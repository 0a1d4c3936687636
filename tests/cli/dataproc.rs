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

/// ffmpeg's EBU R128 meter (`ebur128=peak=true`) on a file: (integrated LUFS, true peak dBTP).
fn loudness(path: &Path) -> (f64, f64) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-nostats", "-hide_banner", "-i"])
        .arg(path)
        .args(["-af", "ebur128=peak=true", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let summary = log.split("Summary:").nth(1).unwrap_or_else(|| panic!("ffmpeg measured {}: {log}", path.display()));
    let field = |name: &str| -> f64 {
        let line = summary.lines().find(|line| line.trim_start().starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap_or(f64::NEG_INFINITY)
    };
    (field("I:"), field("Peak:"))
}

/// The first audio stream as ffprobe sees it: codec, sample format, bits, rate, channels.
fn audio_format(path: &Path) -> (String, String, String, u32, u32) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=codec_name,sample_fmt,bits_per_raw_sample,sample_rate,channels", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &json["streams"][0];
    let text = |field: &str| s[field].as_str().unwrap_or("").to_string();
    (
        text("codec_name"),
        text("sample_fmt"),
        text("bits_per_raw_sample"),
        text("sample_rate").parse().unwrap(),
        s["channels"].as_u64().unwrap() as u32,
    )
}

/// The decoded samples of a file's first audio stream, interleaved, as ffmpeg decodes them.
fn samples(path: &Path) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a:0", "-f", "f32le", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg decoded {}", path.display());
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Writes `source` (ffmpeg input arguments) to `path` at `lufs`, encoded with `codec`.
fn make_audio_at(path: &Path, source: &[&str], lufs: f64, codec: &[&str]) {
    let raw = path.with_extension("raw.wav");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(source)
        .args(["-c:a", "pcm_f32le"])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg made {}", raw.display());
    let gain = lufs - loudness(&raw).0;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&raw)
        .args(["-af", &format!("volume={gain}dB")])
        .args(codec)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg made {}", path.display());
    std::fs::remove_file(raw).unwrap();
}

#[test]
fn the_loudness_job_brings_every_format_to_minus_16_lufs_under_the_true_peak_ceiling() {
    let work = tempfile::tempdir().unwrap();
    let (audio, out, measured) = (work.path().join("audio"), work.path().join("out"), work.path().join("measured"));
    std::fs::create_dir_all(&audio).unwrap();
    let music = "aevalsrc=exprs='0.5*sin(2*PI*110*t)*exp(-3*mod(t,0.5))+0.3*sin(2*PI*220*t+2*sin(2*PI*3*t))\
        |0.5*sin(2*PI*110*t)*exp(-3*mod(t,0.5))+0.3*sin(2*PI*277*t+2*sin(2*PI*2*t))':s=44100:d=8";
    let tone = ["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=8", "-ac", "2"];
    // Pink noise with a two-sample click every half second: +14 dB of plain gain would put
    // the clicks far over the ceiling, so only a limiter reaches the target.
    let clicks = "anoisesrc=color=pink:amplitude=0.05:r=48000:d=8:seed=7,\
        aeval=exprs='val(0)+0.9*lt(mod(t,0.5),2/48000)*(1-2*lt(mod(t,0.5),1/48000))'";
    // (file, source, loudness, codec, needs the limiter, the output's name)
    type Case<'a> = (&'a str, &'a [&'a str], f64, &'a [&'a str], bool, &'a str);
    let cases: [Case; 5] = [
        ("tone.wav", &tone, -30.0, &["-c:a", "pcm_s24le"], false, "tone.wav"),
        ("loud.wav", &["-f", "lavfi", "-i", music], -10.0, &["-c:a", "pcm_f32le"], false, "loud.wav"),
        ("song.mp3", &["-f", "lavfi", "-i", music], -20.0, &["-c:a", "libmp3lame", "-b:a", "192k"], false, "song.flac"),
        ("tune.ogg", &["-f", "lavfi", "-i", music], -12.0, &["-c:a", "libvorbis", "-q:a", "5"], false, "tune.flac"),
        (
            "clicks.flac",
            &["-f", "lavfi", "-i", clicks, "-ac", "2"],
            -30.0,
            &["-c:a", "flac", "-sample_fmt", "s16"],
            true,
            "clicks.flac",
        ),
    ];
    for (name, source, lufs, codec, _, _) in cases {
        make_audio_at(&audio.join(name), source, lufs, codec);
    }
    std::fs::copy(repo().join("examples/data/audio/speech.flac"), audio.join("speech.flac")).unwrap();
    let status = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=48000:cl=stereo",
            "-t",
            "2",
            "-c:a",
            "pcm_s16le",
        ])
        .arg(audio.join("silence.wav"))
        .status()
        .unwrap();
    assert!(status.success());
    let noise: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(audio.join("broken.mp3"), noise).unwrap();

    run_job("jobs/loudness.toml", &audio, &out, &[]).assert_code(1);
    let failed = failed_logs(&out);
    assert!(failed.len() == 1 && failed[0].contains("broken.mp3"), "only the broken file fails, named: {failed:?}");
    assert!(!out.join("broken.flac").exists(), "nothing written for it");
    let speech = ("speech.flac", &[][..], 0.0, &[][..], true, "speech.flac");
    for (name, _, _, _, limited, output) in cases.into_iter().chain([speech]) {
        let (source, normalized) = (audio.join(name), out.join(output));
        let (integrated, true_peak) = loudness(&normalized);
        let within = if limited { 1.0 } else { 0.5 };
        assert!((integrated + 16.0).abs() <= within, "{name}: {integrated} LUFS (within {within} LU of -16)");
        assert!(true_peak <= -1.0, "{name}: true peak {true_peak} dBTP");
        let (codec, sample_format, bits, rate, channels) = audio_format(&source);
        let kept = audio_format(&normalized);
        assert_eq!((kept.3, kept.4), (rate, channels), "{name}: rate and channels kept");
        match codec.as_str() {
            "flac" => {
                assert_eq!((kept.0.as_str(), kept.2.as_str()), ("flac", bits.as_str()), "{name}: FLAC's depth kept")
            }
            pcm if pcm.starts_with("pcm_") => {
                assert_eq!(
                    (kept.0.as_str(), kept.1.as_str()),
                    (pcm, sample_format.as_str()),
                    "{name}: WAV's format kept"
                )
            }
            _ => assert_eq!((kept.0.as_str(), kept.2.as_str()), ("flac", "24"), "{name}: lossy -> 24-bit FLAC"),
        }
        let (before, after) = (samples(&source), samples(&normalized));
        assert_eq!(before.len(), after.len(), "{name}: length kept");
        if name == "loud.wav" {
            // A plain gain is exactly that: every sample scaled by one factor.
            let pairs: Vec<(f32, f32)> =
                before.iter().copied().zip(after.iter().copied()).filter(|(x, _)| x.abs() > 1e-3).collect();
            let factor = pairs[0].1 / pairs[0].0;
            assert!(
                pairs.iter().all(|(x, y)| (y / x - factor).abs() <= 1e-4 * factor.abs()),
                "{name}: one gain throughout"
            );
        }
    }
    assert_eq!(samples(&audio.join("silence.wav")), samples(&out.join("silence.wav")), "silence passes unchanged");

    // --measure: the numbers ffmpeg's meter reads, and no audio.
    run_job("jobs/loudness.toml", &audio, &measured, &["--measure"]).assert_code(1);
    let written: Vec<String> = std::fs::read_dir(&measured)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "_fanout")
        .collect();
    assert!(written.iter().all(|name| name.ends_with(".json")), "only measurements: {written:?}");
    for (name, _, _, _, limited, _) in cases {
        let stem = name.split('.').next().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(measured.join(format!("{stem}.json"))).unwrap()).unwrap();
        let (integrated, true_peak) = loudness(&audio.join(name));
        let reported = json["integrated_lufs"].as_f64().unwrap();
        assert!((reported - integrated).abs() <= 0.15, "{stem}: measured {reported}, ffmpeg {integrated}: {json}");
        assert!((json["true_peak_dbtp"].as_f64().unwrap() - true_peak).abs() <= 0.3, "{stem}: true peak {json}");
        assert!(json["loudness_range_lu"].is_number() && json["gain_db"].is_number(), "{stem}: {json}");
        assert_eq!(
            json["limiting_needed"], limited,
            "{stem}: the limiter is needed exactly where plain gain passes the ceiling: {json}"
        );
    }
    let silence: serde_json::Value =
        serde_json::from_slice(&std::fs::read(measured.join("silence.json")).unwrap()).unwrap();
    assert!(silence["integrated_lufs"].is_null() && silence["gain_db"] == 0.0, "silence has no loudness: {silence}");
}

/// `fanout run jobs/validate.toml` from the repository with `flags` and function `args`.
fn run_validate(flags: &[&str], args: &[&str]) -> Ran {
    let mut command = fanout();
    command.current_dir(repo()).args(["run", "jobs/validate.toml", "-q"]).args(flags);
    if !args.is_empty() {
        command.arg("--").args(args);
    }
    command.output().unwrap().into()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Generated orders (JSONL) and flights (CSV) with about 5% faults of known kinds, and their schemas.
fn generated_records(dir: &Path, records: usize) {
    let status = Command::new("python3")
        .arg(repo().join("tests/fixtures/validate/gen.py"))
        .arg(dir)
        .args([records.to_string(), records.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "gen.py failed");
}

#[test]
fn the_validate_job_rejects_exactly_what_python_jsonschema_rejects_in_jsonl_and_csv() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    generated_records(&data, 25_000);
    for (mode, file, schema) in
        [("jsonl", "orders.jsonl", "orders.schema.json"), ("csv", "flights.csv", "flights.schema.json")]
    {
        let out = work.path().join(mode);
        let schema_flag = format!("schema.json={}", data.join(schema).display());
        let input = data.join(file);
        run_validate(&["--input", path_str(&input), "--file", &schema_flag, "--output", path_str(&out)], &[])
            .assert_code(0);
        // The reference: Python jsonschema's Draft202012Validator over every record, with the
        // CSV coercion the function documents; the rejected sets and the valid bytes must match.
        let agree = Command::new("python3")
            .arg(repo().join("tests/fixtures/validate/agree.py"))
            .args([mode, path_str(&input), path_str(&data.join(schema)), path_str(&out), "10000"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&agree.stdout);
        assert!(agree.status.success(), "{mode}: {said}{}", String::from_utf8_lossy(&agree.stderr));
        let total: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!((total["records"].as_u64(), total["shards"].as_u64()), (Some(25_000), Some(3)), "{mode}: {total}");
        assert!(total["rejected"].as_u64().unwrap() > 500, "{mode}: faults were found: {total}");
        // Every rejected line names its record, its line and its reasons.
        let rejected = std::fs::read_to_string(out.join("rejected/part-00001.jsonl")).unwrap();
        let source_text = std::fs::read_to_string(&input).unwrap();
        let source: Vec<&str> = source_text.lines().collect();
        for line in rejected.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let errors = entry["errors"].as_array().unwrap();
            assert!(!errors.is_empty() && errors.iter().all(|e| e.as_str().unwrap().starts_with('/')), "{line}");
            let number = entry["line"].as_u64().unwrap() as usize;
            if mode == "jsonl" {
                // Shard 1 holds the file's lines 10001-20000, numbered from 1.
                let original = source[10_000 + number - 1];
                match serde_json::from_str::<serde_json::Value>(original) {
                    Ok(record) => assert_eq!(entry["record"], record, "{line}"),
                    Err(_) => assert_eq!(entry["record"], original, "{line}: a line that is not JSON is kept as text"),
                }
            }
        }
    }
}

#[test]
fn the_validate_job_coerces_csv_by_the_schema_dedupes_and_refuses_a_bad_schema() {
    let work = tempfile::tempdir().unwrap();
    let schema = work.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"},
                           "score": {"type": ["number", "null"]}, "member": {"type": "boolean"}}}"#,
    )
    .unwrap();
    let csv = work.path().join("people.csv");
    std::fs::write(
        &csv,
        "id,name,score,member\r\n1,Ada,9.5,true\r\n2,\"Hopper, Grace\",NA,FALSE\r\n3a,Linus,1,true\r\n0,Ken,,true\r\n\
         2,Grace again,7,true\r\n5,Barbara,high,yes\r\n",
    )
    .unwrap();
    let out = work.path().join("out");
    let schema_flag = format!("schema.json={}", schema.display());
    run_validate(&["--input", path_str(&csv), "--file", &schema_flag, "--output", path_str(&out)], &["--dedupe", "id"])
        .assert_code(0);
    // Valid rows keep their bytes (quotes, CRLF) under the same header.
    assert_eq!(
        std::fs::read_to_string(out.join("part-00000.csv")).unwrap(),
        "id,name,score,member\r\n1,Ada,9.5,true\r\n2,\"Hopper, Grace\",NA,FALSE\r\n"
    );
    let rejected: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rejected/part-00000.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_line: HashMap<u64, &serde_json::Value> = rejected.iter().map(|r| (r["line"].as_u64().unwrap(), r)).collect();
    let errors = |line: u64| -> String { by_line[&line]["errors"].to_string() };
    assert_eq!(by_line.len(), 4, "{rejected:?}");
    assert!(errors(4).contains("/id: ") && errors(4).contains("3a"), "not an integer: {}", errors(4));
    assert!(errors(5).contains("/id: ") && errors(5).contains("minimum"), "below the minimum: {}", errors(5));
    assert!(errors(6).contains("/id: duplicate of line 3"), "the second id 2: {}", errors(6));
    assert!(errors(7).contains("/score: ") && errors(7).contains("/member: "), "both bad cells named: {}", errors(7));
    assert_eq!(by_line[&5]["record"], serde_json::json!({"id": 0, "name": "Ken", "score": null, "member": true}));
    let total: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (total["records"].as_u64(), total["valid"].as_u64(), total["rejected"].as_u64()),
        (Some(6), Some(2), Some(3))
    );
    assert_eq!(total["duplicates"].as_u64(), Some(1), "{total}");

    // Across shards: ids repeated in a later shard are counted by the reduce, however deep
    // its tree (fan-in 2 over 3 shards' outputs makes more than one level).
    let jsonl = work.path().join("orders.jsonl");
    let record = |id: u32| format!("{{\"id\": {id}, \"name\": \"n{id}\"}}\n");
    let lines: String = (1..=20).chain([3, 7, 7]).chain(21..=25).map(record).collect();
    std::fs::write(&jsonl, lines).unwrap();
    for fan_in in ["4096", "2"] {
        let out = work.path().join(format!("dedupe-{fan_in}"));
        let flags = ["--input", path_str(&jsonl), "--shard", "rows=10", "--fan-in", fan_in, "--file", &schema_flag];
        run_validate(&[&flags[..], &["--output", path_str(&out)]].concat(), &["--dedupe", "id"]).assert_code(0);
        let total: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(total["records"].as_u64(), Some(28), "fan-in {fan_in}: {total}");
        if fan_in == "4096" {
            // Shard 2 holds 3, 7, 7: the second 7 is a duplicate within it, 3 and 7 across shards.
            assert_eq!(
                (total["duplicates"].as_u64(), total["cross_shard_duplicates"].as_u64()),
                (Some(1), Some(2)),
                "{total}"
            );
        }
    }

    // A schema that is not one: every shard fails with the reason, nothing is published.
    let bad = work.path().join("bad.json");
    std::fs::write(&bad, r#"{"type": "objekt"}"#).unwrap();
    let out = work.path().join("bad");
    let bad_flag = format!("schema.json={}", bad.display());
    let ran = run_validate(
        &["--input", path_str(&jsonl), "--file", &bad_flag, "--output", path_str(&out), "--attempts", "1"],
        &[],
    );
    assert_ne!(ran.code, 0, "a bad schema fails the job");
    let logs = failed_logs(&out);
    assert!(!logs.is_empty() && logs.iter().all(|log| log.contains("schema")), "{logs:?}");
    let published: Vec<_> =
        std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "_fanout").collect();
    assert!(published.is_empty(), "nothing published: {published:?}");
}
