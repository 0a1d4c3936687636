//! Human units in job files and flags: byte sizes (`64MiB`), durations (`30s`) and
//! shares (`5%`). Owns parsing and printing of those strings and nothing else; callers
//! attach the file, line and field to the error text returned here.

use std::time::Duration;

/// Parses a byte size: a plain integer (bytes) or a number with a unit.
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones (`kB`, `MB`,
/// `GB`, `TB`) powers of 1000; `B` (or `b`) is bytes. Units are case-insensitive: `64mb` and
/// `64Mb` are both 64 MB, never bits, since nobody sizes storage in bits.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    if number.is_empty() {
        return Err(format!("\"{text}\" is not a size (examples: \"64MiB\", \"512KiB\", \"1GB\", 4096)"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size (examples: \"64MiB\", \"512KiB\", \"1GB\", 4096)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\" (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ))
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("\"{text}\" is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("\"{text}\" is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Parses a duration such as `30s`, `200ms`, `1m 30s` or `2h`. A bare number is refused:
/// nobody can tell whether `30` meant seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("\"{text}\" has no unit (write \"{trimmed}s\" or \"{trimmed}ms\")"));
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("\"{text}\" is not a duration (examples: \"30s\", \"200ms\", \"2m\")"))
}

/// Prints a duration the way `parse_duration` reads it back (`1m 30s`, `200ms`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Prints a byte count in binary units, exact when possible (`64MiB`), else rounded.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{}{unit}", bytes / size)
            } else {
                format!("{:.1}{unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes}B")
}

/// How many failed shards a job tolerates and still succeeds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// A share of all shards, in percent (0 to 100).
    Percent(f64),
    /// An absolute number of shards.
    Count(u64),
}

impl Tolerance {
    /// Parses `"5%"` (a share) or `"3"` (a count of shards).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Some(percent) = trimmed.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| {
                format!("\"{text}\" is not a share (examples: \"0%\", \"2.5%\", or a count such as \"3\")")
            })?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("\"{text}\" must be between 0% and 100%"));
            }
            return Ok(Tolerance::Percent(value));
        }
        trimmed
            .parse::<u64>()
            .map(Tolerance::Count)
            .map_err(|_| format!("\"{text}\" is not a share (examples: \"0%\", \"2.5%\", or a count such as \"3\")"))
    }

    /// True when `failed` failures out of `total` shards are within the tolerance.
    pub fn allows(&self, failed: u64, total: u64) -> bool {
        match *self {
            Tolerance::Count(count) => failed <= count,
            // Cross-multiplied, with a little slack for the float, so that exactly 1 failure
            // of 100 at "1%" passes.
            Tolerance::Percent(percent) => (failed as f64) * 100.0 <= percent * (total as f64) + 1e-9,
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Percent(p) => write!(f, "{p}%"),
            Tolerance::Count(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("1_000").unwrap(), 1000);
        assert_eq!(parse_size("64mb").unwrap(), 64_000_000);
        assert_eq!(parse_size("12b").unwrap(), 12);
    }

    #[test]
    fn bad_sizes_are_refused_with_the_text() {
        for bad in ["", "MiB", "-5MiB", "12 parsecs", "1.3B", "99999999999TiB"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(bad.trim()) || bad.trim().is_empty(), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn tolerance_as_share_or_count() {
        assert!(Tolerance::parse("0%").unwrap().allows(0, 10));
        assert!(!Tolerance::parse("0%").unwrap().allows(1, 10));
        assert!(Tolerance::parse("10%").unwrap().allows(1, 10));
        assert!(Tolerance::parse("1%").unwrap().allows(1, 100));
        assert!(!Tolerance::parse("1%").unwrap().allows(2, 100));
        assert!(!Tolerance::parse("10%").unwrap().allows(2, 10));
        assert!(Tolerance::parse("2").unwrap().allows(2, 1000));
        assert!(Tolerance::parse("101%").is_err());
        assert!(Tolerance::parse("lots").is_err());
    }

    #[test]
    fn sizes_print_back() {
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1536), "1.5KiB");
        assert_eq!(format_size(12), "12B");
    }
}
