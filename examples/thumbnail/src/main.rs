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
use image::metadata::Orientation;
use image::{DynamicImage, GenericImageView, GrayImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
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

/// Decodes an image stored the way it was shot (EXIF orientation not yet applied), no
/// smaller than `max_side` on its longest side when it was at least that large. A JPEG is
/// decoded shrunk by its DCT (1/2, 1/4 or 1/8, as libjpeg and PIL's `draft` do), which for
/// a 12-megapixel photo skips most of the decoding work.
fn decode(bytes: Vec<u8>, max_side: u32) -> Result<(DynamicImage, Orientation), String> {
    let format = image::guess_format(&bytes).map_err(|e| e.to_string())?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg_shrunk(&bytes, max_side);
    }
    let mut decoder =
        ImageReader::with_format(Cursor::new(bytes), format).into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    Ok((DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?, orientation))
}

fn decode_jpeg_shrunk(bytes: &[u8], max_side: u32) -> Result<(DynamicImage, Orientation), String> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no image header")?;
    let (wanted_width, wanted_height) = fit(info.width as u32, info.height as u32, max_side);
    let (width, height) = decoder
        .scale(wanted_width.min(u16::MAX as u32) as u16, wanted_height.min(u16::MAX as u32) as u16)
        .map_err(|e| e.to_string())?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let orientation =
        decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let (width, height) = (width as u32, height as u32);
    let short = || "fewer pixels than the header says".to_string();
    let image = match info.pixel_format {
        PixelFormat::L8 => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels).ok_or_else(short)?),
        PixelFormat::L16 => {
            let values = pixels.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(width, height, values).ok_or_else(short)?)
        }
        PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).ok_or_else(short)?),
        PixelFormat::CMYK32 => {
            // The decoder has undone Adobe's inversion: plain CMYK, to RGB without a profile.
            let rgb = pixels
                .chunks_exact(4)
                .flat_map(|p| {
                    let k = 255 - p[3] as u32;
                    [0, 1, 2].map(|i| ((255 - p[i] as u32) * k / 255) as u8)
                })
                .collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, rgb).ok_or_else(short)?)
        }
    };
    Ok((image, orientation))
}

fn thumbnail(options: &Options, relative: &Path) -> Result<(), String> {
    let source = options.input.join(relative);
    let bytes = std::fs::read(&source).map_err(|e| format!("{}: {e}", relative.display()))?;
    let (image, orientation) = decode(bytes, options.max_side)
        .map_err(|e| format!("{}: not a readable image: {e}", relative.display()))?;
    let (width, height) = image.dimensions();
    let (new_width, new_height) = fit(width, height, options.max_side);
    let mut small = DynamicImage::ImageRgb8(image.resize_exact(new_width, new_height, FilterType::Triangle).to_rgb8());
    // Phones store photos sideways and say so in EXIF; a thumbnail should look as the photo does.
    small.apply_orientation(orientation);
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
        eprintln!("{}: decoded {width}x{height} -> {}x{}", relative.display(), small.width(), small.height());
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
