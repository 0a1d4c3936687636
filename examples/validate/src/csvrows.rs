//! CSV records: each row becomes a JSON object, its cells coerced by the types that the
//! schema's top-level `properties[col].type` names, and that object is validated. Valid
//! rows are copied out as the bytes they were in the input (quoting and all), located by the
//! `csv` parser's byte positions: the shard is read whole for that, so a CSV shard needs
//! its size in memory.
//!
//! Coercion of a cell, given the column's types (a string or an array in the schema):
//! - empty or `NA`: null when the types allow `null`; else the text itself when they allow
//!   `string`; else the row fails (`/col: "NA" is not of type "number"`, keyword `type`).
//! - `integer` or `number`: a number when the text is one (Rust's integer and float syntax:
//!   `12`, `-3`, `+4`, `1.5`, `.5`, `1e3`; not `inf`/`nan`). `1.0` is a number whose
//!   `integer`-ness the schema decides, as JSON Schema does.
//! - `boolean`: `true`/`false`, any case.
//! - `object`/`array`: the cell parsed as JSON, when it is a JSON object/array.
//! - `string`: the text. Tried last, so `["integer","string"]` makes `12` a number.
//! - a column with no `type` (or not in the schema): the text, as a string.
//!
//! A row that cannot be coerced is rejected with those reasons only (the schema is not run
//! on a half-coerced row, whose type errors would repeat them).

use crate::shard::{escape_pointer, Problem, Shard};
use serde_json::{Map, Number, Value};
use std::io::Write;

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const OBJECT: u8 = 32;
const ARRAY: u8 = 64;

fn type_bit(name: &str) -> u8 {
    match name {
        "null" => NULL,
        "boolean" => BOOLEAN,
        "integer" => INTEGER,
        "number" => NUMBER,
        "string" => STRING,
        "object" => OBJECT,
        "array" => ARRAY,
        _ => 0,
    }
}

/// The column's type bits from the schema, or None when it names no type.
pub fn column_types(schema: &Value, column: &str) -> Option<u8> {
    let t = schema.get("properties")?.get(column)?.get("type")?;
    let bits = match t {
        Value::String(s) => type_bit(s),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(type_bit).fold(0, |x, y| x | y),
        _ => 0,
    };
    (bits != 0).then_some(bits)
}

fn type_names(bits: u8) -> String {
    let names: Vec<String> = [
        (NULL, "null"),
        (BOOLEAN, "boolean"),
        (INTEGER, "integer"),
        (NUMBER, "number"),
        (STRING, "string"),
        (OBJECT, "object"),
        (ARRAY, "array"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| format!("\"{n}\""))
    .collect();
    names.join(" or ")
}

fn parse_number(s: &str) -> Option<Number> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    // from_f64 refuses inf and NaN, which JSON has no way to hold.
    s.parse::<f64>().ok().and_then(Number::from_f64)
}

/// A cell as the column's types say, or Err when none of them takes it.
pub fn coerce(cell: &str, types: Option<u8>) -> Result<Value, ()> {
    let Some(t) = types else { return Ok(Value::String(cell.to_string())) };
    if cell.is_empty() || cell == "NA" {
        if t & NULL != 0 {
            return Ok(Value::Null);
        }
    } else {
        if t & (INTEGER | NUMBER) != 0 {
            if let Some(n) = parse_number(cell) {
                return Ok(Value::Number(n));
            }
        }
        if t & BOOLEAN != 0 {
            if cell.eq_ignore_ascii_case("true") {
                return Ok(Value::Bool(true));
            }
            if cell.eq_ignore_ascii_case("false") {
                return Ok(Value::Bool(false));
            }
        }
        if t & (OBJECT | ARRAY) != 0 {
            match serde_json::from_str::<Value>(cell) {
                Ok(v @ Value::Object(_)) if t & OBJECT != 0 => return Ok(v),
                Ok(v @ Value::Array(_)) if t & ARRAY != 0 => return Ok(v),
                _ => {}
            }
        }
    }
    if t & STRING != 0 {
        return Ok(Value::String(cell.to_string()));
    }
    Err(())
}

/// A row as a JSON object in the header's order (serde_json's Map sorts its keys; a user
/// reading rejected rows wants the CSV's order).
fn row_json(names: &[String], row: &Map<String, Value>) -> Vec<u8> {
    let mut out = b"{".to_vec();
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            continue;
        }
        if let Some(v) = row.get(name) {
            if out.len() > 1 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name).expect("to a Vec");
            out.push(b':');
            serde_json::to_writer(&mut out, v).expect("to a Vec");
        }
    }
    out.push(b'}');
    out
}

/// A record's bytes from the parser's positions, without blank lines the parser skipped
/// before it (a row never starts with a line break: a quoted one starts with `"`).
fn record_bytes(data: &[u8], start: usize, end: usize) -> &[u8] {
    let mut s = start;
    while s < end && (data[s] == b'\n' || data[s] == b'\r') {
        s += 1;
    }
    &data[s..end]
}

fn write_row(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    if bytes.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn run(shard: &mut Shard, schema: &Value, data: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false) // the header is read here, to copy its bytes out
        .flexible(true) // a short or long row is one rejected row, not a failed shard
        .from_reader(data);
    let mut record = csv::ByteRecord::new();
    if !reader.read_byte_record(&mut record)? {
        return Ok(()); // an empty shard: no header to repeat
    }
    let start = record.position().map_or(0, |p| p.byte() as usize);
    write_row(out, record_bytes(data, start, reader.position().byte() as usize))?;
    let names: Vec<String> = record.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let types: Vec<Option<u8>> = names.iter().map(|n| column_types(schema, n)).collect();
    let pointers: Vec<String> = names.iter().map(|n| format!("/{}", escape_pointer(n))).collect();

    // Line numbers are counted here from the bytes: the parser's own count of lines is
    // not the physical line a row starts on once blank lines or quoted newlines come in.
    let mut counted_to = 0usize;
    let mut lines_before = 0u64;
    while reader.read_byte_record(&mut record)? {
        let pos = record.position().expect("the csv reader sets positions");
        let end = reader.position().byte() as usize;
        let bytes = record_bytes(data, pos.byte() as usize, end);
        let first = end - bytes.len();
        lines_before += data[counted_to..first].iter().filter(|&&b| b == b'\n').count() as u64;
        counted_to = first;
        let line = lines_before + 1;
        shard.summary.records += 1;
        if record.len() != names.len() {
            let raw = String::from_utf8_lossy(bytes.trim_ascii_end());
            let p =
                Problem::new("parse", "", format_args!("row has {} fields, the header {}", record.len(), names.len()));
            shard.summary.rejected += 1;
            shard.reject(&serde_json::to_vec(&raw)?, &[p], line)?;
            continue;
        }
        let mut row = Map::new();
        let mut problems = Vec::new();
        for (i, cell) in record.iter().enumerate() {
            let value = match std::str::from_utf8(cell) {
                Err(_) => {
                    problems.push(Problem::new("parse", &pointers[i], "not UTF-8"));
                    Value::String(String::from_utf8_lossy(cell).into_owned())
                }
                Ok(text) => coerce(text, types[i]).unwrap_or_else(|()| {
                    let shown = Value::String(text.to_string());
                    let t = types[i].unwrap_or(0);
                    problems.push(Problem::new(
                        "type",
                        &pointers[i],
                        format_args!("{shown} is not of type {}", type_names(t)),
                    ));
                    shown
                }),
            };
            row.insert(names[i].clone(), value);
        }
        let row = Value::Object(row);
        if problems.is_empty() {
            if let Some(p) = shard.check(&row) {
                problems = p;
            }
        }
        if !problems.is_empty() {
            shard.summary.rejected += 1;
            let json = row_json(&names, row.as_object().expect("built as an object"));
            shard.reject(&json, &problems, line)?;
            continue;
        }
        match shard.keep(&row, line)? {
            Err(first) => {
                let json = row_json(&names, row.as_object().expect("built as an object"));
                shard.duplicate(&json, first, line)?;
            }
            Ok(()) => {
                shard.summary.valid += 1;
                write_row(out, bytes)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coerces_by_type() {
        let s = json!({"properties": {
            "n": {"type": "number"}, "i": {"type": ["integer", "null"]}, "b": {"type": "boolean"},
            "s": {"type": "string"}, "a": {"type": ["array", "string"]}, "u": {"minimum": 3}}});
        let t = |c: &str| column_types(&s, c);
        assert_eq!(coerce("1.5", t("n")), Ok(json!(1.5)));
        assert_eq!(coerce("-7", t("n")), Ok(json!(-7)));
        assert_eq!(coerce("1e3", t("n")), Ok(json!(1000.0)));
        assert_eq!(coerce("NA", t("n")), Err(()));
        assert_eq!(coerce("", t("n")), Err(()));
        assert_eq!(coerce("inf", t("n")), Err(()));
        assert_eq!(coerce("NA", t("i")), Ok(Value::Null));
        assert_eq!(coerce("", t("i")), Ok(Value::Null));
        assert_eq!(coerce("18446744073709551615", t("i")), Ok(json!(18446744073709551615u64)));
        assert_eq!(coerce("TRUE", t("b")), Ok(json!(true)));
        assert_eq!(coerce("no", t("b")), Err(()));
        assert_eq!(coerce("NA", t("s")), Ok(json!("NA")));
        assert_eq!(coerce("", t("s")), Ok(json!("")));
        assert_eq!(coerce("[1,2]", t("a")), Ok(json!([1, 2])));
        assert_eq!(coerce("{1,2}", t("a")), Ok(json!("{1,2}")));
        assert_eq!(t("u"), None);
        assert_eq!(coerce("5", t("u")), Ok(json!("5")));
        assert_eq!(coerce("5", t("zz")), Ok(json!("5")));
    }

    #[test]
    fn names_types() {
        assert_eq!(type_names(INTEGER | NULL), "\"null\" or \"integer\"");
    }
}
