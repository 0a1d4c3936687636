//! `validate`: a fanout function that checks records against a JSON Schema (draft 2020-12)
//! and splits them into valid and rejected, with a summary of each shard.
//!
//! Map (record shards, JSONL or CSV on stdin): the schema is `/files/schema.json` (a side
//! file: `--file schema.json=my-schema.json`), or `--schema PATH`. Valid records go to stdout
//! as the bytes they were (the part file `DEST/part-NNNNN<ext>`; for CSV the header line
//! first). Each rejected record is a line `{"record": R, "errors": ["<path>: <message>", ...],
//! "line": N}` of `/out/rejected/part-NNNNN.jsonl`, written only when the shard has one:
//! `<path>` is the JSON pointer of the failing value with the root written `/` (`/`,
//! `/user/email`, `/items/0/qty`), and N the 1-based line of the record in the shard's input
//! (a CSV header is line 1; blank lines count). `/out/summaries/part-NNNNN.json` counts the
//! shard: `{"records", "valid", "rejected", "duplicates", "errors_by_keyword", "shard"}`.
//! NNNNN is `FANOUT_SHARD` (0 when unset). A line that is not JSON is rejected (keyword
//! `parse`, the record being the line as a string); blank lines are skipped.
//!
//! `--format csv|jsonl` (default: JSONL when the first non-blank byte is `{`, else CSV).
//! CSV cells are coerced by the schema's `properties[col].type` (see `csvrows`).
//! `--dedupe KEY`: a valid record whose top-level KEY (field or column) equals that of a record
//! kept earlier in the shard is dropped, counted in `duplicates` and written to the rejected
//! file (`/KEY: duplicate of line N`); the kept keys go to `/out/keys/part-NNNNN.jsonl` so
//! the merge can count keys kept by more than one shard.
//! `--merge` (the reduce): sums every `summaries/*.json` under /in and prints one summary.
//!
//! Exit codes: 0 done; 2 a bad schema (missing, not JSON, not a valid 2020-12 schema, a
//! `$ref` to anything outside it: there is no network) or bad arguments, with one line on
//! stderr and nothing written; 1 an I/O error. `format` is an annotation only, as in Python's
//! `jsonschema` by default. `--out DIR` and `--in DIR` stand for /out and /in when run natively.

mod csvrows;
mod jsonl;
mod shard;
mod summary;

use serde_json::Value;
use shard::Shard;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

const USAGE: &str = "usage: validate [--schema PATH] [--format csv|jsonl] [--dedupe KEY] [--out DIR]\n       validate --merge [--in DIR]";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug)]
struct Args {
    schema: PathBuf,
    format: Option<Format>,
    dedupe: Option<String>,
    merge: bool,
    in_dir: PathBuf,
    out_dir: PathBuf,
}

/// Why the run stopped: the exit code and the one line for stderr.
struct Fail(i32, String);

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(1, format!("I/O error: {e}"))
    }
}

fn parse_args(argv: impl Iterator<Item = String>) -> Result<Args, Fail> {
    let mut args = Args {
        schema: "/files/schema.json".into(),
        format: None,
        dedupe: None,
        merge: false,
        in_dir: "/in".into(),
        out_dir: "/out".into(),
    };
    let mut it = argv;
    let usage = |m: String| Fail(2, format!("{m}\n{USAGE}"));
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| usage(format!("{name} needs a value")));
        match a.as_str() {
            "--schema" => args.schema = value("--schema")?.into(),
            "--format" => {
                args.format = Some(match value("--format")?.as_str() {
                    "csv" => Format::Csv,
                    "jsonl" => Format::Jsonl,
                    other => return Err(usage(format!("--format {other}: csv or jsonl"))),
                })
            }
            "--dedupe" => args.dedupe = Some(value("--dedupe")?),
            "--in" => args.in_dir = value("--in")?.into(),
            "--out" => args.out_dir = value("--out")?.into(),
            "--merge" => args.merge = true,
            "-h" | "--help" => return Err(Fail(0, USAGE.to_string())),
            other => return Err(usage(format!("unknown argument {other}"))),
        }
    }
    Ok(args)
}

/// Reads and compiles the schema, once for the whole shard. Any failure is one line.
fn load_schema(path: &std::path::Path) -> Result<(Value, jsonschema::Validator), Fail> {
    let bad = |why: String| Fail(2, format!("schema {}: {}", path.display(), why.replace('\n', " ")));
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let schema: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    // draft202012 so a schema without `$schema` is 2020-12; the options' retriever is the
    // default one, which fetches nothing: a remote `$ref` fails here, as a schema error.
    let validator = jsonschema::draft202012::options().build(&schema).map_err(|e| {
        // Where in the schema, when the meta-schema check says so: `/properties/id/type: ...`.
        let at = e.instance_path().as_str();
        if at.is_empty() {
            bad(format!("not a valid 2020-12 schema: {e}"))
        } else {
            bad(format!("not a valid 2020-12 schema: {at}: {e}"))
        }
    })?;
    Ok((schema, validator))
}

fn shard_number() -> Result<u64, Fail> {
    match std::env::var("FANOUT_SHARD") {
        Err(_) => Ok(0),
        Ok(s) => s.trim().parse().map_err(|_| Fail(2, format!("FANOUT_SHARD={s:?} is not a shard number"))),
    }
}

/// Reads stdin up to its first non-blank byte (skipping a UTF-8 BOM) to tell JSONL from
/// CSV, and gives back a reader over all of it, blanks included, so line numbers hold.
fn sniff(mut input: impl BufRead) -> std::io::Result<(Option<Format>, Vec<u8>, impl BufRead)> {
    let mut prefix = Vec::new();
    let mut first = true;
    let found = loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break None;
        }
        let skip = if first && buf.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
        first = false;
        match buf[skip..].iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let f = if buf[skip + i] == b'{' { Format::Jsonl } else { Format::Csv };
                prefix.extend_from_slice(&buf[skip..skip + i]);
                input.consume(skip + i);
                break Some(f);
            }
            None => {
                let n = buf.len();
                prefix.extend_from_slice(&buf[skip..]);
                input.consume(n);
            }
        }
    };
    Ok((found, prefix, input))
}

fn run(args: Args, input: impl Read, out: &mut impl Write) -> Result<(), Fail> {
    if args.merge {
        let merged = summary::merge(&args.in_dir).map_err(|e| Fail(1, format!("merge: {e}")))?;
        serde_json::to_writer(&mut *out, &merged).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    // The schema and the shard number are checked before anything is written.
    let (schema, validator) = load_schema(&args.schema)?;
    let number = shard_number()?;
    let mut shard = Shard::new(validator, number, args.out_dir.clone(), args.dedupe.clone());
    let (sniffed, prefix, rest) = sniff(BufReader::with_capacity(1 << 20, input))?;
    let format = args.format.or(sniffed).unwrap_or(Format::Jsonl);
    let mut whole = std::io::Cursor::new(prefix).chain(rest);
    match format {
        Format::Jsonl => jsonl::run(&mut shard, whole, out)?,
        Format::Csv => {
            let mut data = Vec::new();
            whole.read_to_end(&mut data)?;
            csvrows::run(&mut shard, &schema, &data, out)?;
        }
    }
    out.flush()?;
    shard.finish()?;
    Ok(())
}

fn main() {
    let code = match parse_args(std::env::args().skip(1)) {
        Ok(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match run(args, std::io::stdin().lock(), &mut out) {
                Ok(()) => 0,
                Err(Fail(code, msg)) => {
                    let _ = out.flush();
                    eprintln!("validate: {msg}");
                    code
                }
            }
        }
        Err(Fail(0, msg)) => {
            println!("{msg}");
            0
        }
        Err(Fail(code, msg)) => {
            eprintln!("validate: {msg}");
            code
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(name: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("validate-test-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
        fn read(&self, rel: &str) -> Option<String> {
            std::fs::read_to_string(self.0.join(rel)).ok()
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs the map on `input` with `schema` and extra args; (exit code, stdout, tmp dir).
    fn map(name: &str, schema: &str, input: &str, extra: &[&str]) -> (i32, String, Tmp) {
        let t = Tmp::new(name);
        let sp = t.0.join("schema.json");
        std::fs::write(&sp, schema).unwrap();
        let out_dir = t.0.join("out");
        let mut argv: Vec<String> =
            vec!["--schema".into(), sp.display().to_string(), "--out".into(), out_dir.display().to_string()];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = parse_args(argv.into_iter()).ok().unwrap();
        let mut out = Vec::new();
        let code = match run(args, input.as_bytes(), &mut out) {
            Ok(()) => 0,
            Err(Fail(c, _)) => c,
        };
        (code, String::from_utf8(out).unwrap(), t)
    }

    fn rejected(t: &Tmp) -> Vec<Value> {
        t.read("out/rejected/part-00000.jsonl")
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    const PERSON: &str = r#"{"type":"object","required":["id","name"],"additionalProperties":false,
        "properties":{"id":{"type":"integer","minimum":1},"name":{"type":"string"},
        "age":{"type":["integer","null"]},"ok":{"type":"boolean"}}}"#;

    #[test]
    fn jsonl_valid_unchanged_rejected_with_reasons() {
        let input = "{\"id\": 1,  \"name\":\"a\"}\n\n{\"id\":0,\"name\":\"b\",\"x\":1}\nnot json\n{\"name\":\"c\"}\r\n{\"id\":2,\"name\":\"d\"}";
        let (code, out, t) = map("jsonl", PERSON, input, &[]);
        assert_eq!(code, 0);
        assert_eq!(out, "{\"id\": 1,  \"name\":\"a\"}\n{\"id\":2,\"name\":\"d\"}\n");
        let r = rejected(&t);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["line"], 3);
        assert_eq!(r[0]["record"], json!({"id":0,"name":"b","x":1}));
        let errs: Vec<&str> = r[0]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(errs.iter().any(|e| e.starts_with("/id: 0 is less than the minimum")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("/: Additional properties")), "{errs:?}");
        assert_eq!(r[1]["line"], 4);
        assert_eq!(r[1]["record"], "not json");
        assert!(r[1]["errors"][0].as_str().unwrap().starts_with("/: not JSON: "));
        assert_eq!(r[2]["line"], 5);
        let s: Value = serde_json::from_str(&t.read("out/summaries/part-00000.json").unwrap()).unwrap();
        assert_eq!(
            s,
            json!({"shard": 0, "records": 5, "valid": 2, "rejected": 3, "duplicates": 0,
            "errors_by_keyword": {"additionalProperties": 1, "minimum": 1, "parse": 1, "required": 1}})
        );
    }

    #[test]
    fn no_rejected_file_when_all_valid() {
        let (code, _, t) = map("allvalid", PERSON, "{\"id\":1,\"name\":\"a\"}\n", &[]);
        assert_eq!(code, 0);
        assert!(t.read("out/rejected/part-00000.jsonl").is_none());
        assert!(t.read("out/summaries/part-00000.json").is_some());
    }

    #[test]
    fn bad_schemas_exit_2_and_write_nothing() {
        for (name, schema) in [
            ("notjson", "{nope"),
            ("badtype", r#"{"type":"wrong"}"#),
            ("remote", r#"{"$ref":"https://example.com/s.json"}"#),
        ] {
            let (code, out, t) = map(name, schema, "{\"id\":1}\n", &[]);
            assert_eq!(code, 2, "{name}");
            assert!(out.is_empty());
            assert!(!t.0.join("out").exists(), "{name}");
        }
        let args = parse_args(["--schema".to_string(), "/nonexistent/s.json".to_string()].into_iter()).ok().unwrap();
        match run(args, &b""[..], &mut Vec::new()) {
            Err(Fail(2, msg)) => assert!(msg.starts_with("schema /nonexistent/s.json: cannot read"), "{msg}"),
            _ => panic!("a missing schema must fail with 2"),
        }
        let t = Tmp::new("schemamsg");
        let sp = t.0.join("s.json");
        std::fs::write(&sp, r#"{"properties":{"id":{"type":"wrong"}}}"#).unwrap();
        match load_schema(&sp) {
            Err(Fail(2, msg)) => {
                assert!(msg.contains("not a valid 2020-12 schema: /properties/id/type: "), "{msg}");
                assert!(!msg.contains('\n'));
            }
            _ => panic!("a bad type must fail with 2"),
        }
    }

    #[test]
    fn dedupe_within_a_shard() {
        let input = "{\"id\":1,\"name\":\"a\"}\n{\"id\":1,\"name\":\"b\"}\n{\"id\":0,\"name\":\"c\"}\n{\"id\":2,\"name\":\"d\"}\n{\"id\":2,\"name\":\"e\"}\n";
        let (_, out, t) = map("dedupe", PERSON, input, &["--dedupe", "id"]);
        assert_eq!(out, "{\"id\":1,\"name\":\"a\"}\n{\"id\":2,\"name\":\"d\"}\n");
        let r = rejected(&t);
        assert_eq!(r[0]["errors"], json!(["/id: duplicate of line 1"]));
        assert_eq!(r[0]["line"], 2);
        assert_eq!(r[2]["errors"], json!(["/id: duplicate of line 4"]));
        let s: Value = serde_json::from_str(&t.read("out/summaries/part-00000.json").unwrap()).unwrap();
        assert_eq!(
            (s["records"].as_u64(), s["valid"].as_u64(), s["rejected"].as_u64(), s["duplicates"].as_u64()),
            (Some(5), Some(2), Some(1), Some(2))
        );
        assert_eq!(s["errors_by_keyword"]["duplicate"], 2);
        assert_eq!(t.read("out/keys/part-00000.jsonl").unwrap(), "[1,1]\n[4,2]\n");
    }

    #[test]
    fn csv_coerced_valid_rows_byte_for_byte() {
        let input = "id,name,age,ok,extra\r\n1,\"Smith, J\",NA,TRUE,x\r\n\r\n2,b,abc,false,y\r\n3,\"say \"\"hi\"\"\",,false,z\r\n0,d,5,true,w\r\n4,e\r\n5,\"a\nb\",1,true,q\r\n0,x,1,true,q\r\n";
        let schema = r#"{"type":"object","required":["id","name"],
        "properties":{"id":{"type":"integer","minimum":1},"name":{"type":"string"},
        "age":{"type":["integer","null"]},"ok":{"type":"boolean"}}}"#;
        let (code, out, t) = map("csv", schema, input, &[]);
        assert_eq!(code, 0);
        assert_eq!(out, "id,name,age,ok,extra\r\n1,\"Smith, J\",NA,TRUE,x\r\n3,\"say \"\"hi\"\"\",,false,z\r\n5,\"a\nb\",1,true,q\r\n");
        let r = rejected(&t);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0]["line"], 4);
        assert_eq!(r[0]["errors"], json!(["/age: \"abc\" is not of type \"null\" or \"integer\""]));
        assert_eq!(r[0]["record"], json!({"id":2,"name":"b","age":"abc","ok":false,"extra":"y"}));
        assert_eq!(r[1]["line"], 6);
        assert_eq!(r[1]["record"], json!({"id":0,"name":"d","age":5,"ok":true,"extra":"w"}));
        assert_eq!(r[2]["line"], 7);
        assert_eq!(r[2]["record"], "4,e");
        assert_eq!(r[3]["line"], 10); // after a row whose quoted cell spans two lines
                                      // The header order is kept in a rejected row.
        assert!(t
            .read("out/rejected/part-00000.jsonl")
            .unwrap()
            .contains("{\"record\":{\"id\":2,\"name\":\"b\",\"age\""));
    }

    #[test]
    fn csv_by_flag_and_header_only() {
        let (_, out, t) = map("csvhdr", PERSON, "id,name\n", &["--format", "csv"]);
        assert_eq!(out, "id,name\n");
        let s: Value = serde_json::from_str(&t.read("out/summaries/part-00000.json").unwrap()).unwrap();
        assert_eq!(s["records"], 0);
    }

    #[test]
    fn sniffs_past_blanks_and_bom() {
        let input = "\u{feff}\n\n{\"id\":1,\"name\":\"a\"}\n{\"id\":\"x\",\"name\":\"a\"}\n";
        let (_, out, t) = map("sniff", PERSON, input, &[]);
        assert_eq!(out, "{\"id\":1,\"name\":\"a\"}\n");
        assert_eq!(rejected(&t)[0]["line"], 4);
        assert_eq!(rejected(&t)[0]["errors"], json!(["/id: \"x\" is not of type \"integer\""]));
    }

    #[test]
    fn merge_prints_totals() {
        let t = Tmp::new("mergemain");
        std::fs::create_dir_all(t.0.join("summaries")).unwrap();
        std::fs::write(
            t.0.join("summaries/part-00000.json"),
            r#"{"records":2,"valid":2,"rejected":0,"duplicates":0,"errors_by_keyword":{}}"#,
        )
        .unwrap();
        let args = parse_args(["--merge".to_string(), "--in".to_string(), t.0.display().to_string()].into_iter())
            .ok()
            .unwrap();
        let mut out = Vec::new();
        assert!(run(args, &b""[..], &mut out).is_ok());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["shards"], 1);
        assert_eq!(v["valid"], 2);
        assert!(Path::new(&t.0).exists());
    }
}
