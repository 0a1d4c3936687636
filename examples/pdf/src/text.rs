//! `text`: a page's words in reading order, as `pdftotext` (no options) gives them.
//!
//! hayro's interpreter runs the page's content and hands over every glyph it shows (visible
//! or not: an OCR layer is invisible text). From each glyph's transform comes its baseline
//! origin, where its advance ends, and its size. Then, as poppler's text layer does, on
//! geometry rather than on content order (producers draw in any order):
//! glyphs become words where the gap to the next glyph exceeds a fraction of the font size,
//! words on one baseline and close together become lines, lines stacked closely with
//! overlapping extents become blocks, and blocks are read column-wise: a block comes before
//! another when it is above it in the same column, or in a column to its left.
//! Lines of a block end with a newline, except that a line ending in a hyphen is joined to
//! the next (as pdftotext does); blocks are separated by a blank line and every page ends
//! with a form feed.

use hayro_interpret::font::Glyph as FontGlyph;
use hayro_interpret::font::GlyphRun;
use hayro_interpret::hayro_cmap::BfString;
use hayro_interpret::kurbo::{Point, Rect};
use hayro_interpret::util::TransformExt;
use hayro_interpret::{
    interpret_page, ClipPath, Context, Device, DrawMode, DrawProps, Image, ImageDrawProps, InterpreterCache,
    InterpreterSettings, SoftMask,
};
use hayro_syntax::page::Page;
use hayro_syntax::Pdf;
use std::collections::HashMap;

/// Gap between glyphs, as a fraction of the font size, that separates words (poppler: 0.1).
const WORD_GAP: f64 = 0.1;
/// Gap between words, in font sizes, past which they no longer belong to one line.
const LINE_GAP: f64 = 1.5;
/// How far glyphs' baselines may differ, in font sizes, within one word; a script starts another.
const WORD_BASELINE_SLACK: f64 = 0.15;
/// How far two baselines may differ, in font sizes, and still be one line.
const BASELINE_SLACK: f64 = 0.4;
/// How far a sub- or superscript's baseline may be from its line's (poppler: 0.5).
const SCRIPT_SHIFT: f64 = 0.5;
/// Fragments of a line closer than this (in font sizes) are written without a space (poppler: 0.03).
const TOUCHING: f64 = 0.03;
/// How far below the previous line a line may start, in its font sizes, and join its block.
const BLOCK_LEADING: f64 = 1.9;

pub fn document_text(pdf: &Pdf) -> String {
    let cache = InterpreterCache::new();
    let settings = InterpreterSettings::default();
    let mut text = String::new();
    for page in pdf.pages().iter() {
        page_text(page, &cache, &settings, &mut text);
        text.push('\x0c');
    }
    text
}

fn page_text<'a>(page: &Page<'a>, cache: &InterpreterCache<'a>, settings: &InterpreterSettings, out: &mut String) {
    let (width, height) = page.render_dimensions();
    let bounds = Rect::new(0.0, 0.0, width as f64, height as f64);
    let transform = page.initial_transform(true).to_kurbo();
    let mut context = Context::new(transform, bounds, cache, page.xref(), settings.clone());
    let mut device = GlyphCollector { glyphs: Vec::new(), bounds: bounds.inflate(2.0, 2.0) };
    interpret_page(page, &mut context, &mut device);
    let glyphs = combine_accents(drop_duplicates(size_type3_glyphs(device.glyphs)));
    for rotation in 0..4 {
        let words = words(glyphs.iter().filter(|g| g.rotation == rotation));
        let lines = merge_scripts(lines(words));
        let blocks = blocks(lines);
        for block in reading_order(blocks) {
            write_block(&block, out);
        }
    }
}

/// One glyph, in a frame turned so that its text runs left to right with y growing down.
#[derive(Clone, Debug)]
struct PlacedGlyph {
    x: f64,
    end: f64,
    baseline: f64,
    size: f64,
    rotation: u8,
    text: String,
    /// The content stream put an explicit space right after this glyph.
    space_after: bool,
    /// For a Type 3 glyph, the scale its font was shown at: the size its font matrix implies
    /// is not known, so `size_type3_glyphs` guesses it from the advances at that scale.
    type3_em: Option<f64>,
}

struct GlyphCollector {
    glyphs: Vec<PlacedGlyph>,
    bounds: Rect,
}

impl<'a> Device<'a> for GlyphCollector {
    fn draw_path(&mut self, _: &hayro_interpret::kurbo::BezPath, _: DrawProps<'a>, _: &DrawMode) {}
    fn push_clip_path(&mut self, _: &ClipPath) {}
    fn push_transparency_group(&mut self, _: f32, _: Option<SoftMask<'a>>, _: hayro_interpret::BlendMode) {}
    fn draw_image(&mut self, _: Image<'a, '_>, _: ImageDrawProps<'a>) {}
    fn pop_clip(&mut self) {}
    fn pop_transparency_group(&mut self) {}

    /// Every draw mode counts, invisible text too (an OCR layer). Fill-and-stroke text reaches
    /// the device twice; `drop_duplicates` keeps one copy.
    fn draw_glyph_run(&mut self, run: &GlyphRun<'_, 'a>, props: DrawProps<'a>, _mode: &DrawMode) {
        let glyphs = run.glyphs();
        let mut advances = Vec::with_capacity(glyphs.len());
        for glyph in glyphs {
            let transform = props.transform * glyph.transform();
            let origin = transform * Point::ZERO;
            let advance = match &**glyph {
                FontGlyph::Outline(outline) => outline.advance_width().unwrap_or(0.0),
                FontGlyph::Type3(type3) => type3.advance_width().unwrap_or(0.0),
            } as f64;
            let end = transform * Point::new(advance, 0.0);
            let up = transform * Point::new(0.0, 1000.0) - origin;
            advances.push((origin, end, up.hypot(), glyph));
        }
        let type3 = matches!(glyphs.first().map(|g| &**g), Some(FontGlyph::Type3(_)));
        for (origin, end, em, glyph) in advances {
            if !self.bounds.contains(origin) {
                continue;
            }
            let direction = end - origin;
            let rotation = if direction.hypot() > 1e-6 {
                quadrant(direction.x, direction.y)
            } else {
                // No advance: take the direction from the glyph's up vector, turned.
                let up = props.transform * glyph.transform() * Point::new(0.0, 1.0) - origin;
                quadrant(-up.y, up.x)
            };
            let (x, baseline) = turn(origin, rotation);
            let (end_x, _) = turn(end, rotation);
            let size = em.max(0.5);
            let text = match glyph.as_unicode() {
                Some(BfString::Char(c)) => normalize(&c.to_string()),
                Some(BfString::String(s)) => normalize(&s),
                // Unmapped glyph names (Type 3 fonts from dvips name glyphs by number): the
                // code itself, when it is printable ASCII, as poppler does.
                None => match glyph.char_code() {
                    code @ 0x21..=0x7e => char::from(code as u8).to_string(),
                    _ => continue,
                },
            };
            if text.trim().is_empty() {
                if let Some(last) = self.glyphs.last_mut() {
                    last.space_after = true;
                }
                continue;
            }
            self.glyphs.push(PlacedGlyph {
                x,
                end: end_x.max(x),
                baseline,
                size,
                rotation,
                text,
                space_after: false,
                type3_em: type3.then_some(em),
            });
        }
    }
}

fn quadrant(dx: f64, dy: f64) -> u8 {
    if dx.abs() >= dy.abs() {
        if dx >= 0.0 {
            0
        } else {
            2
        }
    } else if dy >= 0.0 {
        1
    } else {
        3
    }
}

/// Turns a page point (y down) into the frame where text of `rotation` runs left to right.
fn turn(point: Point, rotation: u8) -> (f64, f64) {
    match rotation {
        0 => (point.x, point.y),
        1 => (point.y, -point.x),
        2 => (-point.x, -point.y),
        _ => (-point.y, point.x),
    }
}

/// The fi and fl ligatures as their letters, no-break spaces as spaces, no NULs: what
/// pdftotext writes (it keeps ﬀ, ﬃ and ﬄ as they are; measured on pdfTeX and Ghostscript files).
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{a0}' => out.push(' '),
            '\0' => {}
            c => out.push(c),
        }
    }
    out
}

/// The combining mark of a spacing accent that TeX and others draw over a letter separately.
fn combining_mark(accent: &str) -> Option<char> {
    Some(match accent {
        "\u{b4}" | "\u{2ca}" => '\u{301}',
        "`" | "\u{2cb}" => '\u{300}',
        "^" | "\u{2c6}" => '\u{302}',
        "~" | "\u{2dc}" => '\u{303}',
        "\u{af}" | "\u{2c9}" => '\u{304}',
        "\u{2d8}" => '\u{306}',
        "\u{2d9}" => '\u{307}',
        "\u{a8}" => '\u{308}',
        "\u{2da}" => '\u{30a}',
        "\u{2dd}" => '\u{30b}',
        "\u{2c7}" => '\u{30c}',
        "\u{b8}" => '\u{327}',
        "\u{2db}" => '\u{328}',
        _ => return None,
    })
}

/// An accent drawn on its own over (or under) the letter next to it in content order joins that
/// letter as one composed character (`C` and `ˇ` give `Č`), as pdftotext does.
fn combine_accents(glyphs: Vec<PlacedGlyph>) -> Vec<PlacedGlyph> {
    use unicode_normalization::UnicodeNormalization;
    let mut glyphs: Vec<Option<PlacedGlyph>> = glyphs.into_iter().map(Some).collect();
    for i in 0..glyphs.len() {
        let Some(mark) = glyphs[i].as_ref().and_then(|g| combining_mark(&g.text)) else {
            continue;
        };
        let accent = glyphs[i].clone().expect("checked above");
        let centre = (accent.x + accent.end) / 2.0;
        let base = [i + 1, i.wrapping_sub(1)].into_iter().find(|&j| {
            glyphs.get(j).and_then(|g| g.as_ref()).is_some_and(|g| {
                g.rotation == accent.rotation
                    && combining_mark(&g.text).is_none()
                    && g.text.chars().count() == 1
                    && g.text.chars().all(char::is_alphabetic)
                    && centre >= g.x
                    && centre <= g.end
                    && (g.baseline - accent.baseline).abs() < g.size
            })
        });
        if let Some(j) = base {
            let base = glyphs[j].as_mut().expect("found above");
            base.text = format!("{}{mark}", base.text).nfc().collect();
            base.space_after |= accent.space_after;
            glyphs[i] = None;
        }
    }
    glyphs.into_iter().flatten().collect()
}

/// Type 3 fonts may declare any size. Glyphs shown at one scale take twice the median of their
/// advances as their size: a lowercase letter is about half an em wide.
fn size_type3_glyphs(mut glyphs: Vec<PlacedGlyph>) -> Vec<PlacedGlyph> {
    let mut advances: HashMap<u64, Vec<f64>> = HashMap::new();
    for glyph in &glyphs {
        if let Some(em) = glyph.type3_em {
            advances.entry(em.to_bits()).or_default().push(glyph.end - glyph.x);
        }
    }
    let sizes: HashMap<u64, f64> = advances
        .into_iter()
        .map(|(key, mut widths)| {
            widths.sort_by(f64::total_cmp);
            (key, (2.0 * widths[widths.len() / 2]).max(0.5))
        })
        .collect();
    for glyph in &mut glyphs {
        if let Some(em) = glyph.type3_em {
            glyph.size = sizes[&em.to_bits()];
        }
    }
    glyphs
}

/// Drops a glyph drawn again at (nearly) the same place: fake bold and shadows repeat text.
fn drop_duplicates(glyphs: Vec<PlacedGlyph>) -> Vec<PlacedGlyph> {
    // Glyphs kept so far, by rotation and a 2-point grid cell of their origin.
    type Cell = (u8, i64, i64);
    let mut seen: HashMap<Cell, Vec<(f64, f64, String)>> = HashMap::new();
    let mut kept = Vec::with_capacity(glyphs.len());
    for glyph in glyphs {
        let tolerance = 0.2 * glyph.size;
        let bucket = |v: f64| (v / 2.0).floor() as i64;
        let (bx, by) = (bucket(glyph.x), bucket(glyph.baseline));
        let duplicate = (bx - 1..=bx + 1).any(|x| {
            (by - 1..=by + 1).any(|y| {
                seen.get(&(glyph.rotation, x, y)).is_some_and(|found| {
                    found.iter().any(|(fx, fy, text)| {
                        text == &glyph.text
                            && (fx - glyph.x).abs() < tolerance
                            && (fy - glyph.baseline).abs() < tolerance
                    })
                })
            })
        });
        if duplicate {
            if glyph.space_after {
                if let Some(last) = kept.last_mut() {
                    let last: &mut PlacedGlyph = last;
                    last.space_after = true;
                }
            }
            continue;
        }
        seen.entry((glyph.rotation, bx, by)).or_default().push((glyph.x, glyph.baseline, glyph.text.clone()));
        kept.push(glyph);
    }
    kept
}

#[derive(Debug)]
struct Word {
    x: f64,
    end: f64,
    baseline: f64,
    size: f64,
    text: String,
}

/// Glyphs in content order become words: a glyph continues the current word when it sits on
/// its baseline right where the word ends (within `WORD_GAP` font sizes, kerning allowed).
fn words<'g>(glyphs: impl Iterator<Item = &'g PlacedGlyph>) -> Vec<Word> {
    let mut words: Vec<Word> = Vec::new();
    let mut space_before = true;
    for glyph in glyphs {
        let joins = !space_before
            && words.last().is_some_and(|word| {
                let size = word.size.min(glyph.size);
                let gap = glyph.x - word.end;
                (glyph.baseline - word.baseline).abs() < WORD_BASELINE_SLACK * size
                    && gap < WORD_GAP * size
                    && gap > -0.5 * size.max(word.end - word.x).min(size * 3.0)
                    && (word.size - glyph.size).abs() < 0.5 * size.max(1.0) + 0.35 * size
            });
        if joins {
            let word = words.last_mut().expect("a word to join");
            word.text.push_str(&glyph.text);
            word.end = word.end.max(glyph.end);
            word.size = word.size.max(glyph.size);
        } else {
            words.push(Word {
                x: glyph.x,
                end: glyph.end,
                baseline: glyph.baseline,
                size: glyph.size,
                text: glyph.text.clone(),
            });
        }
        space_before = glyph.space_after;
    }
    words
}

#[derive(Debug)]
struct Line {
    x: f64,
    end: f64,
    baseline: f64,
    size: f64,
    words: Vec<Word>,
}

impl Line {
    fn top(&self) -> f64 {
        self.baseline - self.size
    }
}

/// Words whose baselines are within `BASELINE_SLACK` of the biggest text among them share a
/// row; a row splits into lines (left to right) where a gap is wider than `LINE_GAP`: the
/// next column.
fn lines(mut words: Vec<Word>) -> Vec<Line> {
    words.sort_by(|a, b| a.baseline.total_cmp(&b.baseline).then(a.x.total_cmp(&b.x)));
    let mut rows: Vec<Vec<Word>> = Vec::new();
    let (mut main_baseline, mut main_size) = (f64::NAN, 0.0f64);
    for word in words {
        let same_row = (word.baseline - main_baseline).abs() < BASELINE_SLACK * main_size.max(word.size);
        if !same_row {
            rows.push(Vec::new());
            main_size = 0.0;
        }
        if word.size > main_size * 1.05 {
            (main_baseline, main_size) = (word.baseline, word.size);
        }
        rows.last_mut().expect("a row was opened").push(word);
    }
    let mut lines = Vec::new();
    for mut row in rows {
        row.sort_by(|a, b| a.x.total_cmp(&b.x));
        let mut current: Option<Line> = None;
        for word in row {
            if let Some(line) = current.as_mut() {
                if word.x - line.end < LINE_GAP * line.size.max(word.size) {
                    line.end = line.end.max(word.end);
                    if word.size > line.size {
                        (line.size, line.baseline) = (word.size, word.baseline);
                    }
                    line.words.push(word);
                    continue;
                }
                lines.push(current.take().expect("a line is open"));
            }
            current =
                Some(Line { x: word.x, end: word.end, baseline: word.baseline, size: word.size, words: vec![word] });
        }
        lines.extend(current);
    }
    lines
}

/// Sub- and superscripts (and the raised A of the LaTeX logo) sit on baselines of their own;
/// they join the line of bigger (or as big and longer) text they lean on, where it is within
/// `SCRIPT_SHIFT` of its size above or below and they lie within its extent (or just past its end).
fn merge_scripts(mut lines: Vec<Line>) -> Vec<Line> {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|&a, &b| lines[a].size.total_cmp(&lines[b].size));
    let mut merged_into: Vec<Option<usize>> = vec![None; lines.len()];
    for &small in &order {
        let host = (0..lines.len()).filter(|&h| h != small && merged_into[h].is_none()).find(|&h| {
            let (s, h) = (&lines[small], &lines[h]);
            let bigger = h.size > s.size * 1.05;
            let as_big_and_longer = h.size >= s.size * 0.95 && h.words.len() > s.words.len();
            (bigger || as_big_and_longer)
                && (s.baseline - h.baseline).abs() < SCRIPT_SHIFT * h.size
                && s.x >= h.x - 0.5 * h.size
                && s.end <= h.end + 1.5 * h.size
        });
        if let Some(host) = host {
            merged_into[small] = Some(host);
        }
    }
    let mut moved: Vec<(usize, Vec<Word>)> = Vec::new();
    for small in 0..lines.len() {
        if let Some(mut host) = merged_into[small] {
            // A script of a script lands on the outermost line.
            while let Some(next) = merged_into[host] {
                host = next;
            }
            moved.push((host, std::mem::take(&mut lines[small].words)));
        }
    }
    for (host, words) in moved {
        let line = &mut lines[host];
        for word in words {
            line.x = line.x.min(word.x);
            line.end = line.end.max(word.end);
            line.words.push(word);
        }
        line.words.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    lines.into_iter().filter(|line| !line.words.is_empty()).collect()
}

#[derive(Debug)]
struct Block {
    x: f64,
    end: f64,
    top: f64,
    bottom: f64,
    lines: Vec<Line>,
}

/// Lines stacked closely (a line's top within `BLOCK_LEADING` sizes of the last line's
/// baseline) whose extents overlap horizontally become a block: a paragraph, a column cell.
fn blocks(mut lines: Vec<Line>) -> Vec<Block> {
    lines.sort_by(|a, b| a.baseline.total_cmp(&b.baseline).then(a.x.total_cmp(&b.x)));
    let mut blocks: Vec<Block> = Vec::new();
    for line in lines {
        let target = blocks.iter().rposition(|block| {
            let last = block.lines.last().expect("a block has a line");
            let down = line.baseline - last.baseline;
            let overlap = line.end.min(block.end) - line.x.max(block.x);
            down > 0.0
                && down < BLOCK_LEADING * line.size.max(last.size)
                && overlap > 0.0
                && (line.size - last.size).abs() < 0.3 * line.size.max(last.size)
        });
        match target {
            Some(i) => {
                let block = &mut blocks[i];
                block.x = block.x.min(line.x);
                block.end = block.end.max(line.end);
                block.bottom = line.baseline;
                block.lines.push(line);
            }
            None => blocks.push(Block {
                x: line.x,
                end: line.end,
                top: line.top(),
                bottom: line.baseline,
                lines: vec![line],
            }),
        }
    }
    blocks
}

/// Column-wise reading order: `a` precedes `b` when they share a column and `a` is above, or
/// when `a` lies wholly left of `b` and their heights overlap. Ties and unrelated blocks go
/// top to bottom, then left to right.
fn reading_order(blocks: Vec<Block>) -> Vec<Block> {
    let n = blocks.len();
    let before = |a: &Block, b: &Block| {
        let columns_overlap = a.end.min(b.end) - a.x.max(b.x) > 0.0;
        let rows_overlap = a.bottom.min(b.bottom) - a.top.max(b.top) > 0.0;
        (columns_overlap && a.top < b.top) || (a.end <= b.x && rows_overlap)
    };
    let mut indegree = vec![0usize; n];
    let mut edges = vec![Vec::new(); n];
    for a in 0..n {
        for b in 0..n {
            if a != b && before(&blocks[a], &blocks[b]) {
                edges[a].push(b);
                indegree[b] += 1;
            }
        }
    }
    let key = |i: usize| (blocks[i].top, blocks[i].x);
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        // The topmost-leftmost block with nothing left before it; a cycle (which overlapping
        // layouts can make) is broken by taking the topmost-leftmost block left.
        let ready =
            (0..n).filter(|&i| !done[i] && indegree[i] == 0).min_by(|&a, &b| key(a).partial_cmp(&key(b)).unwrap());
        let next = ready.unwrap_or_else(|| {
            (0..n).filter(|&i| !done[i]).min_by(|&a, &b| key(a).partial_cmp(&key(b)).unwrap()).expect("a block left")
        });
        done[next] = true;
        order.push(next);
        for &b in &edges[next] {
            indegree[b] = indegree[b].saturating_sub(1);
        }
    }
    let mut slots: Vec<Option<Block>> = blocks.into_iter().map(Some).collect();
    order.into_iter().map(|i| slots[i].take().expect("each block once")).collect()
}

/// Hebrew, Arabic, Syriac, Thaana, N'Ko and their presentation forms: written right to left.
fn is_right_to_left(c: char) -> bool {
    matches!(c, '\u{590}'..='\u{8ff}' | '\u{fb1d}'..='\u{fdff}' | '\u{fe70}'..='\u{feff}')
}

/// Glyphs come in visual order (left to right on the page); a right-to-left word is read,
/// and written by pdftotext, in logical order: its letters reversed.
fn logical_order(word: &str) -> std::borrow::Cow<'_, str> {
    if word.chars().any(is_right_to_left) {
        std::borrow::Cow::Owned(word.chars().rev().collect())
    } else {
        std::borrow::Cow::Borrowed(word)
    }
}

fn write_block(block: &Block, out: &mut String) {
    let count = block.lines.len();
    for (index, line) in block.lines.iter().enumerate() {
        let mut text = String::new();
        for (i, word) in line.words.iter().enumerate() {
            // Words that touch (a script and what it belongs to) are written together.
            if i > 0 {
                let before = &line.words[i - 1];
                if word.x - before.end >= TOUCHING * word.size.min(before.size) {
                    text.push(' ');
                }
            }
            text.push_str(&logical_order(&word.text));
        }
        let hyphenated = index + 1 < count && text.ends_with('-') && text.len() > 1;
        if hyphenated {
            text.pop();
            out.push_str(&text);
        } else {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out.push('\n');
}
