//! A fanout function: every image under /in (JPEG, PNG, GIF, WebP, BMP, TIFF) through a
//! pipeline of steps applied in the order given, written under /out at the same path with the
//! output format's extension. For example
//! `--auto-orient --resize 1024 --sharpen 1.0 --format webp --quality 80`.
//!
//! Steps (each may appear several times):
//!   --auto-orient        turn upright as the EXIF orientation says (as `convert -auto-orient`)
//!   --resize N           longest side N pixels, aspect kept, never enlarged (`-resize NxN>`)
//!   --crop WxH+X+Y       the W by H region at X,Y, clipped to the picture (`-crop WxH+X+Y`)
//!   --rotate 90|180|270  clockwise (`-rotate`)
//!   --flip h|v           mirror left-right (h, `-flop`) or top-bottom (v, `-flip`)
//!   --grayscale          to one grey channel (Rec. 709 luma, as `-colorspace Gray`)
//!   --sharpen SIGMA      unsharp mask: radius 3 sigma, amount 1 (`-unsharp 0xSIGMA`)
//!   --denoise            3x3 median on every channel (`-statistic Median 3x3`)
//! Output: --format jpeg|png|webp (default: the input's, else png), --quality N (JPEG, 1-100,
//! default 85). WebP is written lossless (no pure-Rust lossy WebP encoder is good enough).
//! Usage: image STEPS... [--in DIR] [--out DIR] [FILE...]; FILEs limit the work to those.

mod steps;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use steps::{Picture, Step};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    Jpeg,
    Png,
    Webp,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }
}

struct Options {
    steps: Vec<Step>,
    format: Option<Format>,
    quality: u8,
    input: PathBuf,
    output: PathBuf,
    files: Vec<PathBuf>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        steps: Vec::new(),
        format: None,
        quality: 85,
        input: PathBuf::from("/in"),
        output: PathBuf::from("/out"),
        files: Vec::new(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let step = match arg.as_str() {
            "--auto-orient" => Step::AutoOrient,
            "--resize" => Step::Resize(
                value("--resize")?.parse().ok().filter(|n| *n > 0).ok_or("--resize needs a whole number of pixels")?,
            ),
            "--crop" => Step::parse_crop(&value("--crop")?)?,
            "--rotate" => match value("--rotate")?.as_str() {
                "90" => Step::Rotate(90),
                "180" => Step::Rotate(180),
                "270" => Step::Rotate(270),
                other => return Err(format!("--rotate {other}: use 90, 180 or 270")),
            },
            "--flip" => match value("--flip")?.as_str() {
                "h" => Step::FlipHorizontal,
                "v" => Step::FlipVertical,
                other => return Err(format!("--flip {other}: use h or v")),
            },
            "--grayscale" | "--greyscale" => Step::Grayscale,
            "--sharpen" => Step::Sharpen(
                value("--sharpen")?
                    .parse()
                    .ok()
                    .filter(|s: &f32| *s > 0.0 && *s <= 50.0)
                    .ok_or("--sharpen needs a sigma from 0 to 50")?,
            ),
            "--denoise" => Step::Denoise,
            "--format" => {
                options.format = Some(match value("--format")?.to_ascii_lowercase().as_str() {
                    "jpeg" | "jpg" => Format::Jpeg,
                    "png" => Format::Png,
                    "webp" => Format::Webp,
                    other => return Err(format!("--format {other}: use jpeg, png or webp")),
                });
                continue;
            }
            "--quality" => {
                options.quality = value("--quality")?
                    .parse()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or("--quality must be 1-100")?;
                continue;
            }
            "--in" => {
                options.input = PathBuf::from(value("--in")?);
                continue;
            }
            "--out" => {
                options.output = PathBuf::from(value("--out")?);
                continue;
            }
            file if !file.starts_with("--") => {
                options.files.push(PathBuf::from(file));
                continue;
            }
            other => return Err(format!("unknown option {other}")),
        };
        options.steps.push(step);
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

/// Decodes an image, with its EXIF orientation (applied only by `--auto-orient`). When the
/// pipeline shrinks the picture to `shrink_to` pixels on its longest side before anything
/// that needs every pixel, a JPEG is decoded shrunk by its DCT (1/2, 1/4 or 1/8, no smaller
/// than that), which for a photo skips most of the decoding work.
fn decode(bytes: &[u8], shrink_to: Option<u32>) -> Result<(DynamicImage, Orientation, ImageFormat), String> {
    if let Some(longest) = shrink_to {
        if image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg) {
            let (image, orientation) = decode_jpeg_shrunk(bytes, longest)?;
            return Ok((image, orientation, ImageFormat::Jpeg));
        }
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("not an image in a known format")?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    Ok((image, orientation, format))
}

/// Decodes a JPEG shrunk by its DCT to no less than `longest` on its longest side.
fn decode_jpeg_shrunk(bytes: &[u8], longest: u32) -> Result<(DynamicImage, Orientation), String> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no image header")?;
    let (w, h) = (info.width as u32, info.height as u32);
    let fit = |side: u32| ((side as u64 * longest as u64).div_ceil(w.max(h) as u64)).min(u16::MAX as u64) as u16;
    let (width, height) = decoder.scale(fit(w), fit(h)).map_err(|e| e.to_string())?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let (width, height) = (width as u32, height as u32);
    let short = || "fewer pixels than the header says".to_string();
    let image = match info.pixel_format {
        PixelFormat::L8 => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(width, height, pixels).ok_or_else(short)?)
        }
        PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(width, height, pixels).ok_or_else(short)?)
        }
        // 16-bit and CMYK JPEGs are rare: the full decoder handles them.
        PixelFormat::L16 | PixelFormat::CMYK32 => {
            let (image, orientation, _) = decode(bytes, None)?;
            return Ok((image, orientation));
        }
    };
    Ok((image, orientation))
}

/// The longest side the pipeline shrinks pictures to before any step that needs every pixel
/// (turns, flips and grey do not; a crop, sharpening or denoising does).
fn shrink_target(steps: &[Step]) -> Option<u32> {
    for step in steps {
        match step {
            Step::Resize(longest) => return Some(*longest),
            Step::ResizeTo { width, height } => return Some(*width.max(height)),
            Step::AutoOrient | Step::Rotate(_) | Step::FlipHorizontal | Step::FlipVertical | Step::Grayscale => {}
            Step::Crop { .. } | Step::Sharpen(_) | Step::Denoise => return None,
        }
    }
    None
}

/// A picture decoded shrunk is a little off the full one's proportions (its sides were
/// rounded up): its first resize is sized from the full picture instead, turned as the steps
/// before it turn it, so the output is exactly the size the full decode would give.
fn exact_resize(steps: &[Step], full: Option<(u32, u32)>, decoded: (u32, u32), orientation: Orientation) -> Vec<Step> {
    let mut steps = steps.to_vec();
    let Some((mut w, mut h)) = full.filter(|&size| size != decoded) else {
        return steps;
    };
    for step in steps.iter_mut() {
        match *step {
            Step::Rotate(90 | 270) => (w, h) = (h, w),
            Step::AutoOrient
                if matches!(
                    orientation,
                    Orientation::Rotate90
                        | Orientation::Rotate270
                        | Orientation::Rotate90FlipH
                        | Orientation::Rotate270FlipH
                ) =>
            {
                (w, h) = (h, w)
            }
            Step::Resize(longest) => {
                let (width, height) = steps::fit(w, h, longest);
                *step = Step::ResizeTo { width, height };
                break;
            }
            _ => {}
        }
    }
    steps
}

fn encode(picture: &Picture, format: Format, quality: u8) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    match format {
        Format::Jpeg => {
            let (data, color) = match picture.channels {
                1 => (picture.data.clone(), jpeg_encoder::ColorType::Luma),
                2 => (picture.drop_alpha().data, jpeg_encoder::ColorType::Luma),
                3 => (picture.data.clone(), jpeg_encoder::ColorType::Rgb),
                _ => (picture.drop_alpha().data, jpeg_encoder::ColorType::Rgb),
            };
            let width = u16::try_from(picture.width).map_err(|_| "too wide for JPEG (65535 pixels at most)")?;
            let height = u16::try_from(picture.height).map_err(|_| "too tall for JPEG (65535 pixels at most)")?;
            jpeg_encoder::Encoder::new(&mut bytes, quality)
                .encode(&data, width, height, color)
                .map_err(|e| e.to_string())?;
        }
        Format::Png => {
            let image = picture.to_dynamic();
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                &mut bytes,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            image.write_with_encoder(encoder).map_err(|e| e.to_string())?;
        }
        Format::Webp => {
            // image's WebP encoder takes RGB or RGBA (and grey, as RGB).
            let image = match picture.channels {
                1 | 3 => DynamicImage::ImageRgb8(picture.to_dynamic().to_rgb8()),
                _ => DynamicImage::ImageRgba8(picture.to_dynamic().to_rgba8()),
            };
            image
                .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut bytes))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(bytes)
}

fn process(options: &Options, relative: &Path) -> Result<PathBuf, String> {
    let bytes = std::fs::read(options.input.join(relative)).map_err(|e| e.to_string())?;
    let shrink_to = shrink_target(&options.steps);
    // The full size matters only when the picture may be decoded shrunk: read the header then.
    let full_size = shrink_to
        .and_then(|_| image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format().ok()?.into_dimensions().ok());
    let (image, mut orientation, input_format) = decode(&bytes, shrink_to)?;
    let mut picture = Picture::from_dynamic(image);
    let steps = exact_resize(&options.steps, full_size, (picture.width, picture.height), orientation);
    for step in &steps {
        picture = step.apply(picture, &mut orientation)?;
    }
    let format = options.format.unwrap_or(match input_format {
        ImageFormat::Jpeg => Format::Jpeg,
        ImageFormat::WebP => Format::Webp,
        _ => Format::Png,
    });
    let encoded = encode(&picture, format, options.quality)?;
    let target = options.output.join(relative).with_extension(format.extension());
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&target, encoded).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target)
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("image: {message}");
            return ExitCode::from(2);
        }
    };
    let mut files = options.files.clone();
    if files.is_empty() {
        if let Err(e) = walk(&options.input, Path::new(""), &mut files) {
            eprintln!("image: cannot list {}: {e}", options.input.display());
            return ExitCode::from(2);
        }
    }
    let mut failures = Vec::new();
    for relative in &files {
        match process(&options, relative) {
            Ok(target) => eprintln!("{} -> {}", relative.display(), target.display()),
            Err(reason) => failures.push(format!("{}: {reason}", relative.display())),
        }
    }
    for failure in &failures {
        eprintln!("{failure}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn steps_keep_their_order_and_output_settings_do_not_count_as_steps() {
        let options =
            parse(&["--auto-orient", "--resize", "1024", "--sharpen", "1.0", "--format", "webp", "--quality", "80"])
                .unwrap();
        assert_eq!(options.steps, vec![Step::AutoOrient, Step::Resize(1024), Step::Sharpen(1.0)]);
        assert_eq!(options.format, Some(Format::Webp));
        assert_eq!(options.quality, 80);
        let options = parse(&["--rotate", "270", "--crop", "10x20+3+4", "--flip", "v"]).unwrap();
        assert_eq!(
            options.steps,
            vec![Step::Rotate(270), Step::Crop { width: 10, height: 20, x: 3, y: 4 }, Step::FlipVertical]
        );
    }

    #[test]
    fn jpegs_are_decoded_shrunk_only_when_a_resize_comes_before_any_step_needing_every_pixel() {
        let steps = |args: &[&str]| parse(args).unwrap().steps;
        assert_eq!(
            shrink_target(&steps(&["--auto-orient", "--rotate", "90", "--resize", "800", "--sharpen", "1"])),
            Some(800)
        );
        assert_eq!(shrink_target(&steps(&["--crop", "10x10+0+0", "--resize", "800"])), None);
        assert_eq!(shrink_target(&steps(&["--denoise", "--resize", "800"])), None);
        assert_eq!(shrink_target(&steps(&["--grayscale"])), None);
    }

    #[test]
    fn bad_arguments_name_the_option() {
        for (args, needle) in [
            (&["--rotate", "45"][..], "--rotate 45"),
            (&["--crop", "10x"][..], "--crop"),
            (&["--quality", "0"][..], "--quality"),
            (&["--format", "gif"][..], "--format gif"),
            (&["--resize"][..], "--resize needs a value"),
            (&["--blur"][..], "unknown option --blur"),
        ] {
            let error = parse(args).err().unwrap_or_else(|| panic!("{args:?} should fail"));
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }
}
