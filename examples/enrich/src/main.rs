//! A fanout function for record shards (a Kafka topic's offset range, or rows of a JSONL
//! file): every JSON object on stdin, one a line, is printed again with two fields added,
//! `"bytes"` (its length) and `"seq"` (its position in the shard), so each input record has
//! exactly one output line. `--length-prefixed` reads records framed by a 4-byte big-endian
//! length instead (binary payloads) and prints `{"seq": N, "bytes": N}` for each.
//!
//! A record may carry a `"do"` field to misbehave on purpose (for tests): `"trap"`, `"loop"`,
//! `"exit"` (status 3), `"alloc"` (grow memory until refused), `"flaky"` (fail the first
//! attempt only), `"passwd"` (try to read the host's /etc/passwd; a leak would be printed).

use std::io::{BufRead, Read, Write};
use std::process::exit;

fn misbehave(record: &str) {
    let Some(at) = record.find("\"do\":") else { return };
    let rest = record[at + 5..].trim_start();
    let command: String = rest.trim_start_matches('"').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    match command.as_str() {
        "trap" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "exit" => exit(3),
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
            }
        }
        "flaky" if std::env::var("FANOUT_ATTEMPT").as_deref() == Ok("1") => {
            eprintln!("flaky: failing attempt 1");
            exit(1);
        }
        "passwd" => {
            if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
                println!("{{\"leak\":{:?}}}", text);
            }
        }
        _ => {}
    }
}

fn lines() {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (seq, line) in stdin.split(b'\n').enumerate() {
        let line = line.expect("read stdin");
        let record = String::from_utf8_lossy(&line);
        misbehave(&record);
        let body = record.trim();
        let inner = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')).unwrap_or("");
        let comma = if inner.trim().is_empty() { "" } else { "," };
        writeln!(out, "{{\"seq\":{seq},\"bytes\":{}{comma}{inner}}}", line.len()).expect("write stdout");
    }
    out.flush().expect("flush stdout");
}

fn length_prefixed() {
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seq = 0u64;
    loop {
        let mut length = [0u8; 4];
        match stdin.read_exact(&mut length) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read stdin: {e}"),
        }
        let mut record = vec![0u8; u32::from_be_bytes(length) as usize];
        stdin.read_exact(&mut record).expect("a whole record");
        writeln!(out, "{{\"seq\":{seq},\"bytes\":{}}}", record.len()).expect("write stdout");
        seq += 1;
    }
    out.flush().expect("flush stdout");
}

fn main() {
    if std::env::args().any(|a| a == "--length-prefixed") {
        length_prefixed();
    } else {
        lines();
    }
}
