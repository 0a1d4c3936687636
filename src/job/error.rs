//! Where a job's values came from and what is wrong with them: the [`Origin`] of a value
//! (a job file's line, a flag, a default) and the [`JobError`] that names it. Owns the
//! error texts' shape (`jobs/x.toml:7: function.timeout: ...`); it reads nothing.

use std::path::{Path, PathBuf};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A job file, at this line.
    File { path: PathBuf, line: usize },
    /// A command-line flag.
    Flag,
    /// fanout's default for a field nobody set.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag => f.write_str("command line"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A job file or flag that cannot become a job. Each variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}: cannot read the job file: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// The TOML itself is malformed or has a field the schema does not know.
    #[error("{}:{line}:{column}: {field}{message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, field: String, message: String },
    /// A field parsed but its value is unusable (bad size, duration, glob, location...).
    #[error("{origin}: {field}: {message}")]
    Field { origin: Origin, field: String, message: String },
    /// A required field is absent from both the file and the flags.
    #[error("{whole}: {field} is missing: {hint}")]
    Missing { whole: String, field: String, hint: String },
}

/// The job file being read (none when the job is all flags): turns byte spans into lines.
pub(crate) struct JobText<'a> {
    pub(crate) file: Option<&'a Path>,
    pub(crate) text: &'a str,
}

impl JobText<'_> {
    /// The origin of a value found at `offset` of the file.
    pub(crate) fn origin_at(&self, offset: usize) -> Origin {
        match self.file {
            Some(path) => Origin::File { path: path.to_path_buf(), line: line_of(self.text, offset) },
            None => Origin::Flag,
        }
    }

    /// The file as a whole (`jobs/x.toml`), or `command line` for a job given by flags.
    pub(crate) fn whole(&self) -> String {
        match self.file {
            Some(file) => file.display().to_string(),
            None => Origin::Flag.to_string(),
        }
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// A TOML error as one line naming the file, line, column and dotted field.
pub(crate) fn syntax_error(file: &Path, text: &str, error: toml::de::Error) -> JobError {
    let start = error.span().map(|s| s.start).unwrap_or(0);
    let line = line_of(text, start);
    let line_start = text[..start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = start.saturating_sub(line_start) + 1;
    let message = error.message().trim().to_string();
    // toml names an unknown key but not its table, and names no key at all for a value of
    // the wrong type: find both, so the user sees `function.args`, not just `args`.
    let key = match message.strip_prefix("unknown field `") {
        Some(rest) => Some(rest.split('`').next().unwrap_or_default().to_string()),
        None => {
            let line_text = text[line_start..].lines().next().unwrap_or_default();
            line_text
                .split_once('=')
                .map(|(key, _)| key.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        }
    };
    let field = match key {
        Some(key) => {
            let table = enclosing_table(text, start);
            let path = if table.is_empty() { key } else { format!("{table}.{key}") };
            format!("{path}: ")
        }
        None => String::new(),
    };
    JobError::Syntax { file: file.into(), line, column, field, message }
}

/// The dotted name of the table that holds `offset`: the last `[header]` above it, plus
/// the key of an inline table (`shard = { ... }`) when the offset sits inside one. A
/// header line itself belongs to the top level (its name is the key in question).
fn enclosing_table(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let current_line = before.rsplit('\n').next().unwrap_or_default();
    if current_line.trim_start().starts_with('[') {
        return String::new();
    }
    let mut table = String::new();
    for line in before.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") {
            if let Some(end) = trimmed.find(']') {
                table = trimmed[1..end].trim().to_string();
            }
        }
    }
    if let Some((key, rest)) = current_line.split_once('=') {
        if rest.contains('{') {
            let key = key.trim();
            table = if table.is_empty() { key.to_string() } else { format!("{table}.{key}") };
        }
    }
    table
}
