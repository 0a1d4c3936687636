//! The example functions end to end: outputs decoded and checked, not just found.

use crate::common::*;
use image::GenericImageView;

#[test]
fn thumbnail_job_from_the_readme_makes_real_thumbnails() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("thumbs");
    // The README's command, with the output redirected into a fresh folder.
    let ran =
        fanout().current_dir(repo()).args(["run", "jobs/thumbnails.toml", "--output"]).arg(&dest).output().unwrap();
    let ran = Ran::from(ran);
    ran.assert_code(0);
    assert!(ran.stdout.contains("4/4 shards ok"), "{}", ran.stdout);

    let inputs = std::fs::read_dir(repo().join("examples/data/images")).unwrap();
    let mut checked = 0;
    for input in inputs {
        let input = input.unwrap().path();
        let original = image::open(&input).unwrap();
        let (w, h) = original.dimensions();
        let thumb_path = dest.join(input.file_name().unwrap()).with_extension("jpg");
        let thumb = image::open(&thumb_path).unwrap_or_else(|e| panic!("{}: {e}", thumb_path.display()));
        assert_eq!(image::ImageFormat::from_path(&thumb_path).unwrap(), image::ImageFormat::Jpeg);
        let (tw, th) = thumb.dimensions();
        assert_eq!(tw.max(th), 256, "{}: longest side", thumb_path.display());
        // aspect kept within one pixel
        let expected_short = (w.min(h) as f64 * 256.0 / w.max(h) as f64).round();
        assert!((tw.min(th) as f64 - expected_short).abs() <= 1.0, "{}: {tw}x{th} from {w}x{h}", thumb_path.display());
        assert_eq!(tw >= th, w >= h, "orientation kept");
        // The picture is the picture: compare a downscaled original with the thumbnail.
        let reference = original.resize_exact(tw, th, image::imageops::FilterType::Triangle).to_rgb8();
        let thumb = thumb.to_rgb8();
        let diff: f64 = reference
            .pixels()
            .zip(thumb.pixels())
            .map(|(a, b)| (0..3).map(|i| (a[i] as f64 - b[i] as f64).abs()).sum::<f64>())
            .sum::<f64>()
            / (tw * th * 3) as f64;
        assert!(diff < 12.0, "{}: mean difference {diff} from the original", thumb_path.display());
        checked += 1;
    }
    assert_eq!(checked, 4);

    let job = job_dir(&dest);
    let rows = report(&job);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert_eq!(row["status"], "ok");
        assert_eq!(row["attempts"], "1");
        assert!(row["bytes_out"].parse::<u64>().unwrap() > 1000);
    }
    let summary = summary(&job);
    assert_eq!(summary["shards"]["ok"], 4);
    assert_eq!(summary["status"], "succeeded");
}

#[test]
fn wordcount_counts_match_a_count_made_here() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    let texts = [
        ("a.txt", "one two three\nfour\n"),
        ("b.txt", "  leading and trailing  \n\n\nlast line without newline"),
        ("deep/er/c.txt", "tabs\tand\nnewlines\r\nand CRLF\r\n"),
        ("empty.txt", ""),
        ("d.txt", "naïve café déjà vu — ünïcödé\n"),
    ];
    write_files(&input, &texts);
    let dest = work.path().join("out");
    run_in(
        work.path(),
        &[
            "run",
            "--input",
            "in",
            "--function",
            function("wordcount").to_str().unwrap(),
            "--output",
            "out",
            "--shard",
            "objects=2",
        ],
    )
    .assert_code(0);
    for (name, text) in texts {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(json["file"], name);
        assert_eq!(json["words"], text.split_ascii_whitespace().count() as u64, "{name}");
        assert_eq!(json["lines"], text.matches('\n').count() as u64, "{name}");
        assert_eq!(json["bytes"], text.len() as u64, "{name}");
    }
    let rows = report(&job_dir(&dest));
    assert_eq!(rows.len(), 3, "5 files in shards of 2");
}

#[test]
fn a_second_run_loads_the_compiled_function_from_the_cache() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "x")]);
    let cache = work.path().join("cache");
    let wasm = function("wordcount");
    for (run, expect_hit) in [("one", false), ("two", true)] {
        let ran = fanout()
            .current_dir(work.path())
            .env("FANOUT_CACHE_DIR", &cache)
            .args(["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", run, "--json"])
            .output()
            .unwrap();
        let ran = Ran::from(ran);
        ran.assert_code(0);
        let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        assert_eq!(summary["function"]["cache_hit"], expect_hit, "run {run}");
    }
    assert_eq!(std::fs::read_dir(cache.join("modules")).unwrap().count(), 1, "one compiled artifact");
}

#[test]
fn a_crate_folder_that_is_up_to_date_is_not_announced_as_built() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "x")]);
    function("wordcount"); // built once, so the run below has nothing to compile
    let crate_dir = repo().join("examples/wordcount");
    let ran =
        run_in(work.path(), &["run", "--input", "in", "--function", crate_dir.to_str().unwrap(), "--output", "out"]);
    ran.assert_code(0);
    assert!(!ran.stderr.contains("Finished"), "cargo's idle Finished line is not shown:\n{}", ran.stderr);
    assert!(!ran.stderr.contains("Compiling"), "{}", ran.stderr);
}

#[test]
fn a_wasip2_component_runs_like_a_module() {
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("target");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo().join("examples/wordcount"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet", "--target-dir"])
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success());
    let component = target.join("wasm32-wasip2/release/wordcount.wasm");
    let bytes = std::fs::read(&component).unwrap();
    assert_eq!(&bytes[4..8], &[0x0d, 0, 1, 0], "a component, not a core module");
    write_files(&work.path().join("in"), &[("a.txt", "three small words\n")]);
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", component.to_str().unwrap(), "--output", "out", "--json"],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["function"]["kind"], "component");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("out/a.txt.json")).unwrap()).unwrap();
    assert_eq!(json["words"], 3);
}

#[test]
fn plan_prints_the_shards_and_runs_nothing() {
    let work = tempfile::tempdir().unwrap();
    let files: Vec<(String, String)> = (0..10).map(|i| (format!("f{i}.txt"), "x".repeat(100 * (i + 1)))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    write_files(&work.path().join("in"), &refs);
    let ran = run_in(
        work.path(),
        &["plan", "--input", "in", "--function", "nothing.wasm", "--output", "out", "--shard", "bytes=1000"],
    );
    ran.assert_code(0);
    // 100+200+...: groups close once they reach 1000 bytes, never splitting a file
    assert!(ran.stdout.contains("shards (bytes=1000B), 10 objects"), "{}", ran.stdout);
    assert!(ran.stdout.lines().next().unwrap().starts_with("00000  4 objects"), "{}", ran.stdout);
    assert!(!work.path().join("out").exists(), "plan writes nothing");
}

#[test]
fn workers_scale_to_zero_between_retries_and_cold_start_again() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("flaky", "flaky")]);
    let wasm = function("misbehave");
    let ran = run_in(
        work.path(),
        &[
            "run",
            "--input",
            "in",
            "--function",
            wasm.to_str().unwrap(),
            "--output",
            "out",
            "--idle",
            "50ms",
            "--backoff",
            "600ms",
            "--json",
        ],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["attempts"], 2);
    assert_eq!(summary["cold_starts"], 2, "the worker exited while the shard waited for its retry");
    let rows = report(&job_dir(&work.path().join("out")));
    assert_eq!(rows[0]["attempts"], "2");
    assert_eq!(rows[0]["cold_start"], "true");
    assert_eq!(std::fs::read_to_string(work.path().join("out/flaky.ok")).unwrap(), "passed on attempt 2\n");
}

/// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6), as phones write.
fn jpeg_with_orientation_6(image: &image::RgbImage) -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 90).encode_image(image).unwrap();
    // APP1: "Exif\0\0", a big-endian TIFF header, one IFD entry: 0x0112 SHORT 1 = 6.
    let tiff: [u8; 26] = [b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0];
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut jpeg = plain[..2].to_vec(); // SOI
    jpeg.extend_from_slice(&app1);
    jpeg.extend_from_slice(&plain[2..]);
    jpeg
}

#[test]
fn thumbnails_of_awkward_images_are_upright_and_colliding_outputs_are_refused() {
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Left half red, right half blue: after a quarter turn clockwise, red is on top.
    let halves = RgbImage::from_fn(600, 400, |x, _| if x < 300 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) });
    std::fs::write(input.join("sideways.jpg"), jpeg_with_orientation_6(&halves)).unwrap();
    let green = DynamicImage::ImageRgb8(RgbImage::from_pixel(500, 300, Rgb([30, 200, 40])));
    for (name, format, image) in [
        ("green.gif", ImageFormat::Gif, green.clone()),
        ("green.webp", ImageFormat::WebP, green.clone()),
        ("green.bmp", ImageFormat::Bmp, green.clone()),
        ("green.tiff", ImageFormat::Tiff, green.clone()),
        ("alpha.png", ImageFormat::Png, DynamicImage::ImageRgba8(green.to_rgba8())),
        ("deep.png", ImageFormat::Png, DynamicImage::ImageLuma16(green.to_luma16())),
        // The same name with another extension: both thumbnails would be twin.jpg.
        ("twin.png", ImageFormat::Png, green.clone()),
        ("twin.jpg", ImageFormat::Jpeg, green.clone()),
    ] {
        image.save_with_format(input.join(name), format).unwrap();
    }
    // A photo-sized JPEG, which the function decodes shrunk by its DCT (1/8 here): the
    // thumbnail must still be the picture.
    let photo = RgbImage::from_fn(2400, 1600, |x, y| {
        let ring = (((x as f64 - 1200.0).hypot(y as f64 - 800.0) / 90.0).sin() * 100.0 + 120.0) as u8;
        Rgb([(x / 10) as u8, ring, (y / 7) as u8])
    });
    DynamicImage::ImageRgb8(photo.clone()).save_with_format(input.join("photo.jpg"), ImageFormat::Jpeg).unwrap();
    std::fs::write(input.join("notes.jpg"), "not a picture").unwrap();
    let dest = work.path().join("out");
    let wasm = function("thumbnail");
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--attempts", "1"],
    );
    ran.assert_code(1);

    let sideways = image::open(dest.join("sideways.jpg")).unwrap().to_rgb8();
    assert_eq!(sideways.dimensions(), (171, 256), "turned upright as its EXIF says");
    let (top, bottom) = (sideways.get_pixel(85, 20), sideways.get_pixel(85, 235));
    assert!(top[0] > 150 && top[2] < 100, "red on top after the turn: {top:?}");
    assert!(bottom[2] > 150 && bottom[0] < 100, "blue below: {bottom:?}");
    for name in ["green", "alpha", "deep"] {
        let thumb = image::open(dest.join(format!("{name}.jpg"))).unwrap().to_rgb8();
        assert_eq!(thumb.dimensions(), (256, 154), "{name}");
        let centre = thumb.get_pixel(128, 77);
        if name != "deep" {
            assert!(centre[1] > 150 && centre[0] < 80 && centre[2] < 90, "{name}: {centre:?}");
        }
    }

    let thumb = image::open(dest.join("photo.jpg")).unwrap().to_rgb8();
    assert_eq!(thumb.dimensions(), (256, 171));
    let reference = image::imageops::resize(&photo, 256, 171, image::imageops::FilterType::Triangle);
    let diff = reference
        .pixels()
        .zip(thumb.pixels())
        .map(|(a, b)| (0..3).map(|i| a[i].abs_diff(b[i]) as u64).sum::<u64>())
        .sum::<u64>() as f64
        / (256 * 171 * 3) as f64;
    assert!(diff < 8.0, "photo.jpg: mean difference {diff} from a full-size resize");

    let job = job_dir(&dest);
    let rows = report(&job);
    let keys = keys_by_shard(&job);
    let row = |key: &str| rows.iter().find(|r| keys[&r["shard"]] == key).unwrap_or_else(|| panic!("{key}"));
    assert!(row("notes.jpg")["error"].starts_with("exit code 1: thumbnail: notes.jpg: not a readable image"));
    // green.{gif,webp,bmp,tiff} and twin.{png,jpg} each make one name: one of each wins, and
    // the others fail, naming the shard that holds the name, and publish nothing.
    let refused: Vec<_> = rows.iter().filter(|r| r["error"].contains("is also an output of shard")).collect();
    assert_eq!(refused.len(), 3 + 1, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["status"] == "ok").count(), rows.len() - 4 - 1);
    for r in &refused {
        assert_eq!(r["status"], "failed");
        let owner = r["error"].split("shard ").nth(1).unwrap()[..5].to_string();
        let owner_row = rows.iter().find(|o| format!("{:05}", o["shard"].parse::<u64>().unwrap()) == owner).unwrap();
        assert_eq!(owner_row["status"], "ok", "the named shard published the name");
    }
    image::open(dest.join("twin.jpg")).unwrap();

    // A redrive keeps the rule: the name belongs to the shard that committed it.
    let ran = run_in(work.path(), &["redrive", "out"]);
    ran.assert_code(1);
    let rows = report(&job);
    assert_eq!(rows.iter().filter(|r| r["error"].contains("is also an output of shard")).count(), 4);
}
