//! The image pipeline (`examples/image`) against ImageMagick's `convert` with the same steps,
//! on the sample photos: geometry exact, pictures the same to within decoder noise, filters
//! doing what they claim (measured), and every output readable by Pillow.

use crate::common::*;
use image::{DynamicImage, GenericImageView, GrayImage};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sample images, and chelsea stored on its side with EXIF orientation 6 (as a camera held
/// upright writes it), made by Pillow.
fn inputs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(repo().join("examples/data/images")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let made = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\nfrom PIL import Image\nupright = Image.open(sys.argv[1])\nexif = Image.Exif()\nexif[0x0112] = 6\n\
             upright.transpose(Image.Transpose.ROTATE_90).save(sys.argv[2], quality=92, exif=exif)",
        )
        .arg(repo().join("examples/data/images/chelsea_q90.jpg"))
        .arg(dir.join("sideways.jpg"))
        .status()
        .expect("python3 with Pillow");
    assert!(made.success());
}

/// Runs the pipeline over `input` with `steps`; returns the output folder.
fn pipeline(work: &Path, input: &Path, name: &str, steps: &[&str]) -> PathBuf {
    let dest = work.join(name);
    let function = function("image");
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--function",
        function.to_str().unwrap(),
        "--output",
        dest.to_str().unwrap(),
    ];
    args.extend(["--quiet", "--"]);
    args.extend_from_slice(steps);
    run_in(work, &args).assert_code(0);
    dest
}

/// ImageMagick's own `convert` (Debian's, which `scripts/test` installs), not another program
/// of that name earlier on the PATH.
fn convert() -> Command {
    let debian = Path::new("/usr/bin/convert");
    Command::new(if debian.exists() { debian } else { Path::new("convert") })
}

fn magick(input: &Path, args: &[&str], output: &Path) -> DynamicImage {
    let status = convert()
        .arg(input)
        .args(args)
        .arg(output)
        .status()
        .expect("ImageMagick's convert (apt-get install imagemagick)");
    assert!(status.success(), "convert {args:?}");
    image::open(output).unwrap()
}

fn mean_abs_difference(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let total: f64 =
        a.pixels().zip(b.pixels()).map(|(p, q)| (0..3).map(|i| (p[i] as f64 - q[i] as f64).abs()).sum::<f64>()).sum();
    total / (a.width() * a.height() * 3) as f64
}

fn correlation(a: &GrayImage, b: &GrayImage) -> f64 {
    let (xs, ys): (Vec<f64>, Vec<f64>) = a.pixels().zip(b.pixels()).map(|(p, q)| (p[0] as f64, q[0] as f64)).unzip();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

#[test]
fn geometry_matches_convert_exactly_and_pictures_agree_within_decoder_noise() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    inputs(&input);
    let magick_out = work.path().join("magick");
    std::fs::create_dir_all(&magick_out).unwrap();
    // (our steps, convert's, the largest mean difference per channel allowed)
    let cases: [(&str, &[&str], &[&str], f64); 6] = [
        ("rotate90", &["--rotate", "90"], &["-rotate", "90"], 2.0),
        ("rotate270-flop", &["--rotate", "270", "--flip", "h"], &["-rotate", "270", "-flop"], 2.0),
        ("flip", &["--flip", "v"], &["-flip"], 2.0),
        ("crop", &["--crop", "200x100+50+40"], &["-crop", "200x100+50+40", "+repage"], 2.0),
        ("orient", &["--auto-orient"], &["-auto-orient"], 2.0),
        ("resize", &["--resize", "200"], &["-resize", "200x200>"], 4.0),
    ];
    for (name, ours, theirs, allowed) in cases {
        let mut steps = ours.to_vec();
        steps.extend(["--format", "png"]);
        let dest = pipeline(work.path(), &input, name, &steps);
        for file in ["chelsea_q90.jpg", "coffee.png", "astronaut.png", "sideways.jpg"] {
            let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
            let ours = image::open(dest.join(format!("{stem}.png"))).unwrap();
            let theirs = magick(&input.join(file), theirs, &magick_out.join(format!("{name}-{stem}.png")));
            assert_eq!(ours.dimensions(), theirs.dimensions(), "{name} {file}: size against convert");
            let difference = mean_abs_difference(&ours, &theirs);
            assert!(difference <= allowed, "{name} {file}: mean difference {difference} from convert's");
        }
    }
    // EXIF orientation turns the sideways photo upright: the same picture as the original.
    let upright = image::open(work.path().join("orient/sideways.png")).unwrap();
    let original = image::open(input.join("chelsea_q90.jpg")).unwrap();
    assert_eq!(upright.dimensions(), original.dimensions());
    assert!(mean_abs_difference(&upright, &original) < 3.0);
    // Never enlarged.
    let dest = pipeline(work.path(), &input, "no-upscale", &["--resize", "5000"]);
    assert_eq!(image::open(dest.join("coffee.png")).unwrap().dimensions(), (600, 400));
    // Grey: one channel, the same picture as convert's grey.
    let dest = pipeline(work.path(), &input, "grey", &["--grayscale", "--format", "png"]);
    let ours = image::open(dest.join("coffee.png")).unwrap();
    assert_eq!(ours.color(), image::ColorType::L8);
    let theirs = magick(&input.join("coffee.png"), &["-colorspace", "Gray"], &magick_out.join("grey.png"));
    let r = correlation(&ours.to_luma8(), &theirs.to_luma8());
    assert!(r > 0.99, "grey correlates {r} with convert's");
}

/// Variance of the 4-neighbour Laplacian: how much fine detail (edges) a picture has.
fn laplacian_variance(image: &GrayImage) -> f64 {
    let (w, h) = image.dimensions();
    let mut values = Vec::new();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let at = |dx: i32, dy: i32| image.get_pixel((x as i32 + dx) as u32, (y as i32 + dy) as u32)[0] as f64;
            values.push(at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1) - 4.0 * at(0, 0));
        }
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
}

fn psnr(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let mse: f64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| (0..3).map(|i| (p[i] as f64 - q[i] as f64).powi(2)).sum::<f64>())
        .sum::<f64>()
        / (a.width() * a.height() * 3) as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[test]
fn sharpen_adds_detail_and_denoise_brings_a_noised_photo_closer_to_the_original() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let clean = image::open(repo().join("examples/data/images/astronaut.png")).unwrap().to_rgb8();
    // Salt and pepper on 4% of the pixels, from a fixed-seed generator.
    let mut noisy = clean.clone();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for pixel in noisy.pixels_mut() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        match state >> 59 {
            0 => pixel.0 = [0, 0, 0],
            1 => pixel.0 = [255, 255, 255],
            _ => {}
        }
    }
    noisy.save(input.join("noisy.png")).unwrap();
    let clean = DynamicImage::ImageRgb8(clean);
    let noisy = DynamicImage::ImageRgb8(noisy);

    let denoised = image::open(pipeline(work.path(), &input, "denoise", &["--denoise"]).join("noisy.png")).unwrap();
    let (before, after) = (psnr(&noisy, &clean), psnr(&denoised, &clean));
    assert!(after > before + 6.0, "PSNR against the clean photo: {before:.1} dB noised, {after:.1} dB denoised");

    std::fs::remove_file(input.join("noisy.png")).unwrap();
    clean.save(input.join("clean.png")).unwrap();
    let sharpened =
        image::open(pipeline(work.path(), &input, "sharpen", &["--sharpen", "1.0"]).join("clean.png")).unwrap();
    let (before, after) = (laplacian_variance(&clean.to_luma8()), laplacian_variance(&sharpened.to_luma8()));
    assert!(after > before * 1.5, "Laplacian variance {before:.0} before, {after:.0} sharpened");
}

/// Pillow opens and decodes each file.
fn outputs_checked_by_pillow(paths: &[PathBuf]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys\nfrom PIL import Image\nfor p in sys.argv[1:]:\n    Image.open(p).load()")
        .args(paths)
        .output()
        .expect("python3 with Pillow");
    assert!(out.status.success(), "Pillow: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_four_step_pipeline_writes_every_format_and_pillow_reads_every_output() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    inputs(&input);
    let mut outputs = Vec::new();
    for format in ["webp", "jpeg", "png"] {
        let steps = [
            "--auto-orient",
            "--resize",
            "300",
            "--sharpen",
            "1.0",
            "--denoise",
            "--format",
            format,
            "--quality",
            "80",
        ];
        let dest = pipeline(work.path(), &input, format, &steps);
        let extension = if format == "jpeg" { "jpg" } else { format };
        for stem in ["astronaut", "chelsea_q90", "coffee", "logo", "sideways"] {
            let path = dest.join(format!("{stem}.{extension}"));
            let decoded = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (w, h) = decoded.dimensions();
            assert_eq!(w.max(h), 300, "{}", path.display());
            outputs.push((path, w, h));
        }
    }
    let mut script = String::from("import sys\nfrom PIL import Image\n");
    script.push_str("for path in sys.argv[1:]:\n    with Image.open(path) as im:\n        im.load()\n        print(im.format, im.size[0], im.size[1])\n");
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .args(outputs.iter().map(|(path, _, _)| path))
        .output()
        .expect("python3 with Pillow");
    assert!(out.status.success(), "Pillow: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    // The job file from the README, over the samples: WebP that Pillow reads, never enlarged.
    let dest = work.path().join("job");
    let ran = Ran::from(
        fanout().current_dir(repo()).args(["run", "jobs/web-images.toml", "--output"]).arg(&dest).output().unwrap(),
    );
    ran.assert_code(0);
    for (stem, size) in
        [("astronaut", (512, 512)), ("coffee", (600, 400)), ("chelsea_q90", (451, 300)), ("logo", (500, 500))]
    {
        let path = dest.join(format!("{stem}.webp"));
        assert_eq!(image::open(&path).unwrap().dimensions(), size, "{}", path.display());
        outputs_checked_by_pillow(&[path]);
    }
    assert_eq!(lines.len(), outputs.len());
    for (line, (path, w, h)) in lines.iter().zip(&outputs) {
        let format = match path.extension().unwrap().to_str().unwrap() {
            "jpg" => "JPEG",
            "png" => "PNG",
            _ => "WEBP",
        };
        assert_eq!(line, &format!("{format} {w} {h}"), "{}", path.display());
    }
}
