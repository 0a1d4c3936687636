//! `render`: pages as PNG pictures, sized and placed as `pdftoppm -png -r DPI` does: the
//! media box at DPI/72 pixels per point, rounded up, turned by the page's rotation, on white.

use crate::pages::PageSelection;
use crate::Failure;
use hayro::hayro_interpret::util::{RectExt, TransformExt};
use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::Pdf;
use hayro::kurbo::{Affine, Rect};
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::vello_cpu::{Pixmap, RasterizerSettings, RenderContext, Resources, TargetInit};
use hayro::{render_into, RenderCache, RenderSettings};

/// Renders the selected pages one after the other (one picture in memory at a time) and
/// hands each PNG to `emit` with its 1-based page number. Returns how many were written.
pub fn render_pages(
    pdf: &Pdf,
    selection: &PageSelection,
    dpi: f32,
    mut emit: impl FnMut(usize, &[u8]) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let pages = pdf.pages();
    let cache = RenderCache::new();
    let interpreter = InterpreterSettings::default();
    let settings = RenderSettings::default();
    let mut context = RenderContext::new(1, 1);
    let mut resources = Resources::default();
    let mut pixmap = Pixmap::new(1, 1);
    let scale = dpi as f64 / 72.0;
    let indexes = selection.indexes(pages.len());
    for &index in &indexes {
        let page = &pages[index];
        let (width, height, transform) = placement(page, scale);
        context.reset_and_resize(width, height);
        pixmap.resize(width, height);
        render_into(page, &cache, &interpreter, &settings, &mut context, transform);
        context.flush();
        context.render_with(
            &mut pixmap,
            &mut resources,
            RasterizerSettings { target_init: TargetInit::Clear(WHITE), ..Default::default() },
        );
        emit(index + 1, &encode_png(&pixmap, width, height))?;
    }
    Ok(indexes.len())
}

/// The picture's size and the page-to-picture transform. poppler sizes the picture from the
/// media box (`ceil(points * dpi / 72)`); hayro places the crop box, which is the same box on
/// nearly every page. Where they differ and the page is upright, the media box is placed.
fn placement(page: &hayro::hayro_syntax::page::Page<'_>, scale: f64) -> (u16, u16, Affine) {
    let media = page.media_box().to_kurbo();
    let crop = page.intersected_crop_box().to_kurbo();
    let turned = matches!(
        page.rotation(),
        hayro::hayro_syntax::page::Rotation::Horizontal | hayro::hayro_syntax::page::Rotation::FlippedHorizontal
    );
    let (box_w, box_h) = if turned { (media.height(), media.width()) } else { (media.width(), media.height()) };
    let pixels = |points: f64| ((points * scale - 1e-6).ceil() as i64).clamp(1, u16::MAX as i64) as u16;
    let (width, height) = (pixels(box_w), pixels(box_h));
    let same_box = (media.x0 - crop.x0).abs() < 0.01
        && (media.y0 - crop.y0).abs() < 0.01
        && (media.x1 - crop.x1).abs() < 0.01
        && (media.y1 - crop.y1).abs() < 0.01;
    let transform = if same_box || !is_upright(page) {
        Affine::scale(scale) * page.initial_transform(true).to_kurbo()
    } else {
        upright_media_transform(media, scale)
    };
    (width, height, transform)
}

fn is_upright(page: &hayro::hayro_syntax::page::Page<'_>) -> bool {
    matches!(page.rotation(), hayro::hayro_syntax::page::Rotation::None)
}

/// PDF space (y up) to picture space (y down) for the whole media box of an upright page.
fn upright_media_transform(media: Rect, scale: f64) -> Affine {
    Affine::new([scale, 0.0, 0.0, -scale, -media.x0 * scale, media.y1 * scale])
}

/// An RGB PNG, as pdftoppm writes: the page is opaque (cleared to white), so alpha adds nothing.
fn encode_png(pixmap: &Pixmap, width: u16, height: u16) -> Vec<u8> {
    let rgba = pixmap.data_as_u8_slice();
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for pixel in rgba.chunks_exact(4) {
        rgb.extend_from_slice(&pixel[..3]);
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // Fast deflate: a page picture is written once and read rarely; speed wins here.
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("PNG header into memory");
        writer.write_image_data(&rgb).expect("PNG data into memory");
    }
    png_bytes
}
