//! A fanout function: for every image under /in (JPEG, PNG, GIF, WebP, BMP or TIFF), a JPEG
//! thumbnail under /out at the same relative path with a `.jpg` extension, turned upright
//! as its EXIF orientation says, resized so that its longest side is `--max-side` pixels,
//! aspect ratio kept.
//!
//! Usage: thumbnail [--max-side N] [--quality Q] [--in DIR] [--out DIR] [--verbose] [FILE...]
//! Quality defaults to $QUALITY, else 80. FILEs (relative to --in) limit the work to those
//! files, which lets the same code run natively, one file per process, for comparison.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageDecoder, ImageReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

struct Options {
    max_side: u32,
    quality: u8,
    input: PathBuf,
    output: PathBuf,
    files: Vec<PathBuf>,
    verbose: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        max_side: 256,
        quality: std::env::var("QUALITY").ok().and_then(|q| q.parse().ok()).unwrap_or(80),
        input: PathBuf::from("/in"),
        output: PathBuf::from("/out"),
        files: Vec::new(),
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--max-side" => {
                options.max_side =
                    value("--max-side")?.parse().map_err(|_| "--max-side must be a whole number".to_string())?
            }
            "--quality" => {
                options.quality = value("--quality")?.parse().map_err(|_| "--quality must be 1-100".to_string())?
            }
            "--in" => options.input = PathBuf::from(value("--in")?),
            "--out" => options.output = PathBuf::from(value("--out")?),
            "--verbose" => options.verbose = true,
            file if !file.starts_with("--") => options.files.push(PathBuf::from(file)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.max_side == 0 || !(1..=100).contains(&options.quality) {
        return Err("--max-side must be at least 1 and --quality 1-100".into());
    }
    Ok(options)
}

fn walk(dir: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &rel, found)?;
        } else {
            found.push(rel);
        }
    }
    Ok(())
}

/// The thumbnail's size: the longest side becomes `max_side`, the other keeps the aspect.
fn fit(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let scale = |side: u32, long: u32| ((side as f64 * max_side as f64 / long as f64).round() as u32).max(1);
    if width >= height {
        (max_side, scale(height, width))
    } else {
        (scale(width, height), max_side)
    }
}

fn thumbnail(options: &Options, relative: &Path) -> Result<(), String> {
    let source = options.input.join(relative);
    let unreadable = |e: image::ImageError| format!("{}: not a readable image: {e}", relative.display());
    let mut decoder = ImageReader::open(&source)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: {e}", relative.display()))?
        .into_decoder()
        .map_err(unreadable)?;
    // Phones store photos sideways and say so in EXIF; a thumbnail should look as the photo does.
    let orientation = decoder.orientation().map_err(unreadable)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    image.apply_orientation(orientation);
    let (width, height) = image.dimensions();
    let (new_width, new_height) = fit(width, height, options.max_side);
    let small = image.resize_exact(new_width, new_height, FilterType::Triangle).to_rgb8();
    let target = options.output.join(relative).with_extension("jpg");
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut encoded = Vec::with_capacity(64 << 10);
    JpegEncoder::new_with_quality(&mut encoded, options.quality)
        .encode_image(&small)
        .map_err(|e| format!("{}: encoding: {e}", relative.display()))?;
    std::fs::write(&target, encoded).map_err(|e| format!("{}: {e}", target.display()))?;
    if options.verbose {
        eprintln!("{}: {width}x{height} -> {new_width}x{new_height}", relative.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("thumbnail: {message}");
            return ExitCode::from(2);
        }
    };
    let files = if options.files.is_empty() {
        let mut found = Vec::new();
        if let Err(e) = walk(&options.input, Path::new(""), &mut found) {
            eprintln!("thumbnail: reading {}: {e}", options.input.display());
            return ExitCode::FAILURE;
        }
        found
    } else {
        options.files.clone()
    };
    let mut failed = false;
    for file in &files {
        if let Err(message) = thumbnail(&options, file) {
            eprintln!("thumbnail: {message}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
