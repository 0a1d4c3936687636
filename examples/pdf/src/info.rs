//! `info`: what `pdfinfo` tells about a document, as JSON: page count, PDF version, the
//! document information strings, whether it is encrypted, and every page's size in points
//! (the crop box, turned by the page's rotation, as `pdfinfo -f 1 -l N` prints it).

use crate::{open, Failure};
use serde_json::{json, Value};

pub fn document_info(data: Vec<u8>) -> Result<String, Failure> {
    // hayro opens a file encrypted with an empty user password without a word; a wrong
    // password is what tells whether it is encrypted at all (an unencrypted file ignores it).
    let encrypted = crate::has_pdf_header(&data)
        && matches!(
            hayro_syntax::Pdf::new_with_password(data.clone(), "fanout: not the password"),
            Err(hayro_syntax::LoadPdfError::Decryption(_))
        );
    let pdf = open(data)?;
    let metadata = pdf.metadata();
    let text = |value: &Option<Box<[u8]>>| value.as_deref().map(decode_text_string).map_or(Value::Null, Value::from);
    let sizes: Vec<Value> = pdf
        .pages()
        .iter()
        .map(|page| {
            let (width, height) = page.render_dimensions();
            json!([round2(width), round2(height)])
        })
        .collect();
    let info = json!({
        "pages": pdf.pages().len(),
        "version": version_text(pdf.version()),
        "title": text(&metadata.title),
        "author": text(&metadata.author),
        "subject": text(&metadata.subject),
        "creator": text(&metadata.creator),
        "producer": text(&metadata.producer),
        "encrypted": encrypted,
        "page_sizes": sizes,
    });
    Ok(serde_json::to_string_pretty(&info).expect("JSON of plain values") + "\n")
}

fn round2(value: f32) -> f64 {
    (value as f64 * 100.0).round() / 100.0
}

fn version_text(version: hayro_syntax::PdfVersion) -> &'static str {
    use hayro_syntax::PdfVersion::*;
    match version {
        Pdf10 => "1.0",
        Pdf11 => "1.1",
        Pdf12 => "1.2",
        Pdf13 => "1.3",
        Pdf14 => "1.4",
        Pdf15 => "1.5",
        Pdf16 => "1.6",
        Pdf17 => "1.7",
        Pdf20 => "2.0",
    }
}

/// A PDF text string: UTF-16BE or UTF-8 when it starts with their byte order mark, else
/// PDFDocEncoding (Latin-1 but for a few punctuation marks in 0x80-0x9f).
pub fn decode_text_string(bytes: &[u8]) -> String {
    if let Some(utf16) = bytes.strip_prefix(&[0xfe, 0xff]) {
        let units: Vec<u16> = utf16.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
        return String::from_utf16_lossy(&units);
    }
    if let Some(utf8) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8_lossy(utf8).into_owned();
    }
    const DOC_ENCODING_80: [char; 32] = [
        '•', '†', '‡', '…', '—', '–', 'ƒ', '⁄', '‹', '›', '−', '‰', '„', '“', '”', '‘', '’', '‚', '™', 'ﬁ', 'ﬂ', 'Ł',
        'Œ', 'Š', 'Ÿ', 'Ž', 'ı', 'ł', 'œ', 'š', 'ž', '\u{fffd}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => DOC_ENCODING_80[(b - 0x80) as usize],
            0xa0 => '€',
            _ => b as char,
        })
        .collect()
}
