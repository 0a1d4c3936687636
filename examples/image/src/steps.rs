//! The pipeline's steps, on an 8-bit picture of 1 to 4 interleaved channels (grey, grey and
//! alpha, RGB, RGBA). Geometry is exact (a turn is a transpose of pixels, never a resample);
//! filters leave alpha alone.

use fast_image_resize::images::Image as ResizeImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::DynamicImage;

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AutoOrient,
    Resize(u32),
    /// A resize to an exact size: `Resize` of a picture decoded shrunk, sized from the
    /// full picture's proportions so that the result is the size the full one would give.
    ResizeTo {
        width: u32,
        height: u32,
    },
    Crop {
        width: u32,
        height: u32,
        x: u32,
        y: u32,
    },
    Rotate(u16),
    FlipHorizontal,
    FlipVertical,
    Grayscale,
    Sharpen(f32),
    Denoise,
}

pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Step {
    /// `WxH+X+Y`, as ImageMagick's geometry.
    pub fn parse_crop(text: &str) -> Result<Step, String> {
        let bad = || format!("--crop {text:?}: expected WxH+X+Y, e.g. 640x480+10+20");
        let (size, offset) = text.split_once('+').ok_or_else(bad)?;
        let (x, y) = offset.split_once('+').ok_or_else(bad)?;
        let (width, height) = size.split_once('x').ok_or_else(bad)?;
        let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let (width, height) = (number(width)?, number(height)?);
        if width == 0 || height == 0 {
            return Err(bad());
        }
        Ok(Step::Crop { width, height, x: number(x)?, y: number(y)? })
    }

    /// Applies the step. `orientation` is the EXIF orientation still to apply: `--auto-orient`
    /// applies it once and clears it.
    pub fn apply(&self, picture: Picture, orientation: &mut Orientation) -> Result<Picture, String> {
        Ok(match *self {
            Step::AutoOrient => {
                let mut image = picture.to_dynamic();
                image.apply_orientation(*orientation);
                *orientation = Orientation::NoTransforms;
                Picture::from_dynamic(image)
            }
            Step::Resize(longest) => {
                let (width, height) = fit(picture.width, picture.height, longest);
                resize(picture, width, height)?
            }
            Step::ResizeTo { width, height } => resize(picture, width, height)?,
            Step::Crop { width, height, x, y } => crop(picture, width, height, x, y)?,
            Step::Rotate(degrees) => {
                let image = picture.to_dynamic();
                Picture::from_dynamic(match degrees {
                    90 => image.rotate90(),
                    180 => image.rotate180(),
                    _ => image.rotate270(),
                })
            }
            Step::FlipHorizontal => Picture::from_dynamic(picture.to_dynamic().fliph()),
            Step::FlipVertical => Picture::from_dynamic(picture.to_dynamic().flipv()),
            Step::Grayscale => grayscale(picture),
            Step::Sharpen(sigma) => unsharp_mask(picture, sigma),
            Step::Denoise => median3x3(picture),
        })
    }
}

impl Picture {
    /// 8 bits per channel: 16-bit and float images are brought down (as JPEG and WebP need).
    pub fn from_dynamic(image: DynamicImage) -> Picture {
        let (width, height) = (image.width(), image.height());
        let (channels, data) = match image {
            DynamicImage::ImageLuma8(buffer) => (1, buffer.into_raw()),
            DynamicImage::ImageLumaA8(buffer) => (2, buffer.into_raw()),
            DynamicImage::ImageRgb8(buffer) => (3, buffer.into_raw()),
            DynamicImage::ImageRgba8(buffer) => (4, buffer.into_raw()),
            other if other.color().has_alpha() && other.color().has_color() => (4, other.to_rgba8().into_raw()),
            other if other.color().has_alpha() => (2, other.to_luma_alpha8().into_raw()),
            other if other.color().has_color() => (3, other.to_rgb8().into_raw()),
            other => (1, other.to_luma8().into_raw()),
        };
        Picture { width, height, channels, data }
    }

    pub fn to_dynamic(&self) -> DynamicImage {
        let (w, h, data) = (self.width, self.height, self.data.clone());
        let fits = "a picture's buffer matches its size";
        match self.channels {
            1 => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).expect(fits)),
            2 => DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, data).expect(fits)),
            3 => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, data).expect(fits)),
            _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, data).expect(fits)),
        }
    }

    /// The colour channels only (for JPEG, which has no alpha).
    pub fn drop_alpha(&self) -> Picture {
        let keep = if self.channels == 2 { 1 } else { 3 };
        let data = self.data.chunks_exact(self.channels).flat_map(|pixel| pixel[..keep].iter().copied()).collect();
        Picture { width: self.width, height: self.height, channels: keep, data }
    }

    /// Channels a filter works on: all but alpha.
    fn colour_channels(&self) -> usize {
        if self.channels == 2 || self.channels == 4 {
            self.channels - 1
        } else {
            self.channels
        }
    }
}

/// The size with the longest side `longest` and the proportions kept; never larger.
pub fn fit(w: u32, h: u32, longest: u32) -> (u32, u32) {
    if w.max(h) <= longest {
        return (w, h);
    }
    let scale = |side: u32| ((side as f64 * longest as f64 / w.max(h) as f64).round() as u32).max(1);
    if w >= h {
        (longest, scale(h))
    } else {
        (scale(w), longest)
    }
}

fn resize(picture: Picture, new_w: u32, new_h: u32) -> Result<Picture, String> {
    let (w, h) = (picture.width, picture.height);
    if (w, h) == (new_w, new_h) {
        return Ok(picture);
    }
    let pixel_type = match picture.channels {
        1 => PixelType::U8,
        2 => PixelType::U8x2,
        3 => PixelType::U8x3,
        _ => PixelType::U8x4,
    };
    let channels = picture.channels;
    let source = ResizeImage::from_vec_u8(w, h, picture.data, pixel_type).map_err(|e| e.to_string())?;
    let mut target = ResizeImage::new(new_w, new_h, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new().resize(&source, &mut target, &options).map_err(|e| e.to_string())?;
    Ok(Picture { width: new_w, height: new_h, channels, data: target.into_vec() })
}

fn crop(picture: Picture, width: u32, height: u32, x: u32, y: u32) -> Result<Picture, String> {
    if x >= picture.width || y >= picture.height {
        return Err(format!(
            "--crop {width}x{height}+{x}+{y} starts outside the {}x{} picture",
            picture.width, picture.height
        ));
    }
    // Clipped to the picture, as ImageMagick does.
    let width = width.min(picture.width - x);
    let height = height.min(picture.height - y);
    let row = picture.width as usize * picture.channels;
    let mut data = Vec::with_capacity(width as usize * height as usize * picture.channels);
    for line in y..y + height {
        let start = line as usize * row + x as usize * picture.channels;
        data.extend_from_slice(&picture.data[start..start + width as usize * picture.channels]);
    }
    Ok(Picture { width, height, channels: picture.channels, data })
}

/// Rec. 709 luma of the gamma-encoded values; alpha is kept.
fn grayscale(picture: Picture) -> Picture {
    if picture.channels <= 2 {
        return picture;
    }
    let alpha = picture.channels == 4;
    let mut data = Vec::with_capacity(picture.data.len() / picture.channels * if alpha { 2 } else { 1 });
    for pixel in picture.data.chunks_exact(picture.channels) {
        let luma = 0.2126 * pixel[0] as f32 + 0.7152 * pixel[1] as f32 + 0.0722 * pixel[2] as f32;
        data.push(luma.round().clamp(0.0, 255.0) as u8);
        if alpha {
            data.push(pixel[3]);
        }
    }
    Picture { width: picture.width, height: picture.height, channels: if alpha { 2 } else { 1 }, data }
}

/// A normalized Gaussian kernel of radius `ceil(3 sigma)`.
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as i32;
    let weights: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Unsharp mask, amount 1: out = original + (original - blurred), blurred by a separable
/// Gaussian of `sigma` (edges repeat their last pixel). Both passes run over whole rows, so
/// the inner loops are straight slices the compiler vectorizes.
fn unsharp_mask(mut picture: Picture, sigma: f32) -> Picture {
    let kernel = gaussian_kernel(sigma);
    let radius = kernel.len() / 2;
    let (w, h, channels) = (picture.width as usize, picture.height as usize, picture.channels);
    let colour = picture.colour_channels();
    let row_len = w * colour;
    // Horizontal pass, one padded row at a time, into a float image of the colour channels.
    let mut horizontal = vec![0f32; row_len * h];
    let mut padded = vec![0f32; (w + 2 * radius) * colour];
    for y in 0..h {
        let source = &picture.data[y * w * channels..(y + 1) * w * channels];
        for x in 0..w + 2 * radius {
            let sx = x.saturating_sub(radius).min(w - 1);
            for c in 0..colour {
                padded[x * colour + c] = source[sx * channels + c] as f32;
            }
        }
        let out = &mut horizontal[y * row_len..(y + 1) * row_len];
        for (k, weight) in kernel.iter().enumerate() {
            let shifted = &padded[k * colour..k * colour + row_len];
            for (o, v) in out.iter_mut().zip(shifted) {
                *o += weight * v;
            }
        }
    }
    // Vertical pass: each output row is a weighted sum of whole rows of the horizontal pass.
    let mut blurred = vec![0f32; row_len];
    for y in 0..h {
        blurred.iter_mut().for_each(|v| *v = 0.0);
        for (k, weight) in kernel.iter().enumerate() {
            let sy = (y + k).saturating_sub(radius).min(h - 1);
            let row = &horizontal[sy * row_len..(sy + 1) * row_len];
            for (b, v) in blurred.iter_mut().zip(row) {
                *b += weight * v;
            }
        }
        let target = &mut picture.data[y * w * channels..(y + 1) * w * channels];
        for x in 0..w {
            for c in 0..colour {
                let at = x * channels + c;
                let original = target[at] as f32;
                target[at] = (2.0 * original - blurred[x * colour + c]).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    picture
}

/// The median of each colour channel over the 3x3 neighbourhood (edges repeat).
fn median3x3(picture: Picture) -> Picture {
    let (w, h, channels) = (picture.width as usize, picture.height as usize, picture.channels);
    let colour = picture.colour_channels();
    let mut out = picture.data.clone();
    let mut window = [0u8; 9];
    for y in 0..h {
        let rows = [y.saturating_sub(1), y, (y + 1).min(h - 1)];
        for x in 0..w {
            let cols = [x.saturating_sub(1), x, (x + 1).min(w - 1)];
            for c in 0..colour {
                let mut n = 0;
                for &ry in &rows {
                    for &cx in &cols {
                        window[n] = picture.data[(ry * w + cx) * channels + c];
                        n += 1;
                    }
                }
                window.sort_unstable();
                out[(y * w + x) * channels + c] = window[4];
            }
        }
    }
    Picture { data: out, ..picture }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(width: u32, height: u32, channels: usize, f: impl Fn(u32, u32, usize) -> u8) -> Picture {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels {
                    data.push(f(x, y, c));
                }
            }
        }
        Picture { width, height, channels, data }
    }

    fn no_orientation() -> Orientation {
        Orientation::NoTransforms
    }

    #[test]
    fn resize_keeps_the_aspect_and_never_enlarges() {
        let p = Step::Resize(100).apply(picture(400, 300, 3, |x, _, _| x as u8), &mut no_orientation()).unwrap();
        assert_eq!((p.width, p.height), (100, 75));
        let p = Step::Resize(1000).apply(picture(40, 30, 3, |_, _, _| 7), &mut no_orientation()).unwrap();
        assert_eq!((p.width, p.height), (40, 30));
    }

    #[test]
    fn crop_is_exact_and_clipped() {
        let source = picture(10, 8, 1, |x, y, _| (y * 10 + x) as u8);
        let p = Step::parse_crop("3x2+4+5").unwrap().apply(source, &mut no_orientation()).unwrap();
        assert_eq!((p.width, p.height), (3, 2));
        assert_eq!(p.data, vec![54, 55, 56, 64, 65, 66]);
        let clipped = Step::parse_crop("100x100+8+6").unwrap();
        let p = clipped.apply(picture(10, 8, 1, |_, _, _| 0), &mut no_orientation()).unwrap();
        assert_eq!((p.width, p.height), (2, 2));
        assert!(Step::parse_crop("5x5+20+0")
            .unwrap()
            .apply(picture(10, 8, 1, |_, _, _| 0), &mut no_orientation())
            .is_err());
        for bad in ["5x5", "x5+1+1", "0x5+1+1", "5x5+1", "axb+1+1"] {
            assert!(Step::parse_crop(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotate_90_moves_the_top_left_pixel_to_the_top_right() {
        let source = picture(3, 2, 1, |x, y, _| (y * 3 + x) as u8);
        let p = Step::Rotate(90).apply(source, &mut no_orientation()).unwrap();
        assert_eq!((p.width, p.height), (2, 3));
        assert_eq!(p.data, vec![3, 0, 4, 1, 5, 2]);
    }

    #[test]
    fn median_removes_a_lone_speck_and_sharpen_raises_contrast_at_an_edge() {
        let specked = picture(5, 5, 1, |x, y, _| if (x, y) == (2, 2) { 255 } else { 10 });
        let p = Step::Denoise.apply(specked, &mut no_orientation()).unwrap();
        assert!(p.data.iter().all(|&v| v == 10));
        let edge = picture(8, 1, 1, |x, _, _| if x < 4 { 50 } else { 200 });
        let p = Step::Sharpen(1.0).apply(edge, &mut no_orientation()).unwrap();
        assert!(p.data[3] < 50 && p.data[4] > 200, "{:?}", p.data);
    }

    #[test]
    fn auto_orient_applies_once() {
        let mut orientation = Orientation::Rotate90;
        let p = Step::AutoOrient.apply(picture(3, 2, 3, |_, _, _| 1), &mut orientation).unwrap();
        assert_eq!((p.width, p.height), (2, 3));
        let p = Step::AutoOrient.apply(p, &mut orientation).unwrap();
        assert_eq!((p.width, p.height), (2, 3));
    }
}
