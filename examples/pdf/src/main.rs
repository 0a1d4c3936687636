//! A fanout function over PDFs: for every `*.pdf` under /in, one of four operations, with
//! outputs named from the input's path with `.pdf` replaced (`docs/a.pdf` gives `docs/a.txt`,
//! `docs/a.json`, `docs/a-1.png`, `docs/a-1.pdf`), checked against poppler's tools:
//!
//! | operation | output | poppler |
//! | --- | --- | --- |
//! | `text` | UTF-8 text in reading order, pages separated by a form feed | `pdftotext` |
//! | `info` | JSON: pages, version, title, author, producer, encrypted, page sizes | `pdfinfo` |
//! | `render [--pages P] [--dpi N]` | one PNG per page (default: page 1, 72 dpi), `<name>-<page>.png` | `pdftoppm -png` |
//! | `split [--pages P]` | one single-page PDF per page (default: all), `<name>-<page>.pdf` | `pdfseparate` |
//!
//! Usage: pdf OPERATION [--pages 1|1,3|2-5|all] [--dpi N] [--in DIR] [--out DIR] [FILE...]
//! FILEs (relative to --in) limit the work to those files, so the same code can run natively
//! one file per process, for comparison.
//!
//! A file that cannot be read fails with its reason as the last line on stderr (`not a PDF`,
//! `truncated or damaged beyond repair`, `encrypted: needs a password`) and exit code 1, after
//! the other files have been done.

mod info;
mod pages;
mod render;
mod split;
mod text;

use pages::PageSelection;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, PartialEq)]
enum Operation {
    Text,
    Info,
    Render,
    Split,
}

struct Options {
    operation: Operation,
    pages: PageSelection,
    dpi: f32,
    input: PathBuf,
    output: PathBuf,
    files: Vec<PathBuf>,
}

/// Why a file could not be processed: its `Display` is the line `fanout status` shows.
#[derive(Debug)]
pub enum Failure {
    NotPdf,
    Damaged,
    NeedsPassword,
    UnsupportedEncryption,
    Write(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotPdf => write!(f, "not a PDF"),
            Failure::Damaged => write!(f, "truncated or damaged beyond repair"),
            Failure::NeedsPassword => write!(f, "encrypted: needs a password"),
            Failure::UnsupportedEncryption => write!(f, "encrypted: unsupported or invalid encryption"),
            Failure::Write(reason) => write!(f, "cannot write output: {reason}"),
        }
    }
}

/// A PDF header must appear in the first 1024 bytes (what readers, poppler included, accept).
pub fn has_pdf_header(data: &[u8]) -> bool {
    data[..data.len().min(1024)].windows(5).any(|w| w == b"%PDF-")
}

/// Opens `data` with hayro, turning its errors into the reasons users see.
pub fn open(data: Vec<u8>) -> Result<hayro_syntax::Pdf, Failure> {
    use hayro_syntax::{DecryptionError, LoadPdfError};
    if !has_pdf_header(&data) {
        return Err(Failure::NotPdf);
    }
    match hayro_syntax::Pdf::new(data) {
        Ok(pdf) => Ok(pdf),
        Err(LoadPdfError::Decryption(DecryptionError::PasswordProtected)) => Err(Failure::NeedsPassword),
        Err(LoadPdfError::Decryption(_)) => Err(Failure::UnsupportedEncryption),
        Err(LoadPdfError::Invalid) => Err(Failure::Damaged),
    }
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let operation = match args.next().as_deref() {
        Some("text") => Operation::Text,
        Some("info") => Operation::Info,
        Some("render") => Operation::Render,
        Some("split") => Operation::Split,
        Some(other) => return Err(format!("unknown operation {other:?}: use text, info, render or split")),
        None => return Err("usage: pdf text|info|render|split [options] [FILE...]".into()),
    };
    let mut options = Options {
        operation,
        // Set below: render defaults to page 1 (a preview), split to every page.
        pages: PageSelection::All,
        dpi: 72.0,
        input: PathBuf::from("/in"),
        output: PathBuf::from("/out"),
        files: Vec::new(),
    };
    let mut pages = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--pages" => pages = Some(PageSelection::parse(&value("--pages")?)?),
            "--dpi" => {
                options.dpi = value("--dpi")?
                    .parse()
                    .ok()
                    .filter(|dpi: &f32| (1.0..=2400.0).contains(dpi))
                    .ok_or("--dpi must be a number from 1 to 2400")?
            }
            "--in" => options.input = PathBuf::from(value("--in")?),
            "--out" => options.output = PathBuf::from(value("--out")?),
            file if !file.starts_with("--") => options.files.push(PathBuf::from(file)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    options.pages = match (pages, operation) {
        (Some(_), Operation::Text | Operation::Info) => return Err("--pages applies to render and split only".into()),
        (Some(pages), _) => pages,
        (None, Operation::Render) => PageSelection::Ranges(vec![(1, Some(1))]),
        (None, _) => PageSelection::All,
    };
    Ok(options)
}

fn walk(dir: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &rel, found)?;
        } else if rel.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf")) {
            found.push(rel);
        }
    }
    Ok(())
}

/// `docs/a.pdf` with `suffix` `-3.png` gives `docs/a-3.png`.
fn output_path(output: &Path, relative: &Path, suffix: &str) -> PathBuf {
    let stem = relative.file_stem().unwrap_or_default().to_string_lossy();
    output.join(relative.with_file_name(format!("{stem}{suffix}")))
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Failure::Write(format!("{}: {e}", parent.display())))?;
    }
    std::fs::write(path, bytes).map_err(|e| Failure::Write(format!("{}: {e}", path.display())))
}

fn process(options: &Options, relative: &Path) -> Result<usize, Failure> {
    let data = std::fs::read(options.input.join(relative)).map_err(|e| Failure::Write(format!("read: {e}")))?;
    let out = |suffix: &str| output_path(&options.output, relative, suffix);
    match options.operation {
        Operation::Text => {
            let pdf = open(data)?;
            write(&out(".txt"), text::document_text(&pdf).as_bytes())?;
            Ok(1)
        }
        Operation::Info => {
            let json = info::document_info(data)?;
            write(&out(".json"), json.as_bytes())?;
            Ok(1)
        }
        Operation::Render => {
            let pdf = open(data)?;
            render::render_pages(&pdf, &options.pages, options.dpi, |page, png| {
                write(&out(&format!("-{page}.png")), png)
            })
        }
        Operation::Split => {
            split::split_pages(&data, &options.pages, |page, pdf| write(&out(&format!("-{page}.pdf")), pdf))
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("pdf: {message}");
            return ExitCode::from(2);
        }
    };
    let mut files = options.files.clone();
    if files.is_empty() {
        if let Err(e) = walk(&options.input, Path::new(""), &mut files) {
            eprintln!("pdf: cannot list {}: {e}", options.input.display());
            return ExitCode::from(2);
        }
    }
    // Every file is tried; the last failure is printed last, so that it is the shard's reason.
    let mut failures = Vec::new();
    for relative in &files {
        match process(&options, relative) {
            Ok(written) => eprintln!("{}: {written} output(s)", relative.display()),
            Err(failure) => failures.push(format!("{}: {failure}", relative.display())),
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("{failure}");
        }
        ExitCode::from(1)
    }
}
