//! EBU R128 loudness normalization as a fanout function (a WASI command).
//!
//! Every file under `/in` (walked recursively, read-only) is decoded
//! (WAV, FLAC, MP3, Ogg Vorbis, via symphonia), measured with a BS.1770
//! meter (the `ebur128` crate: integrated loudness, loudness range, true
//! peak) and brought to `--target` LUFS (default -16) without its true peak
//! passing `--true-peak` dBTP (default -1). When a plain gain does that, the
//! plain gain is applied and nothing else; when it would push the true peak
//! over the ceiling, a look-ahead limiter working on 4x-oversampled peaks
//! holds the ceiling and the pre-gain is found by re-measuring the limited
//! output, so the result still lands on the target. Files with no integrated
//! loudness (silence, or under 400 ms) are written unchanged.
//!
//! Output goes to `/out` at the input's relative path: WAV stays WAV with
//! its sample format, FLAC stays FLAC with its bit depth, MP3 and Vorbis
//! become 24-bit FLAC; length, channels and rate are kept. `--measure`
//! writes `<stem>.json` with the measurement and the planned gain instead
//! of audio. Nothing is printed on stdout; one summary line per file goes
//! to stderr. Exit 0: all files done. Exit 1: some file was broken or
//! unsupported (one line on stderr each, naming it; the others are still
//! written). Exit 2: bad arguments.
//!
//! The audio is decoded once into one f32 buffer (4 bytes per sample per
//! channel); processing and encoding stream from it chunk by chunk.

mod decode;
mod encode;
mod limiter;
mod meter;
mod normalize;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use normalize::{Plan, Settings};

const USAGE: &str = "usage: audio [--target LUFS] [--true-peak DBTP] [--measure] [--in DIR] [--out DIR]";

struct Args {
    settings: Settings,
    measure: bool,
    input: PathBuf,
    output: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args {
        settings: Settings { target: -16.0, ceiling: -1.0 },
        measure: false,
        input: PathBuf::from("/in"),
        output: PathBuf::from("/out"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String, lo: f64, hi: f64| -> Result<f64, String> {
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
                _ => Err(format!("{name} wants a number from {lo} to {hi}, got {v:?}")),
            }
        };
        match flag {
            "--target" => a.settings.target = number(flag, value(flag)?, -70.0, 0.0)?,
            "--true-peak" => a.settings.ceiling = number(flag, value(flag)?, -30.0, 0.0)?,
            "--measure" if inline.is_none() => a.measure = true,
            // /in and /out are the contract; these are for running natively.
            "--in" => a.input = PathBuf::from(value(flag)?),
            "--out" => a.output = PathBuf::from(value(flag)?),
            "-h" | "--help" => return Ok(None),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Some(a))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}", v)
    } else {
        "null".into()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Peak memory of this process, as far as it can be told: on wasm the
/// linear memory only grows, so its current size is the peak.
fn peak_memory_mib() -> Option<f64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size(0) as f64 * 65536.0 / 1048576.0)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

fn process(path: &Path, out_base: &Path, args: &Args) -> Result<String, String> {
    let audio = decode::decode(path)?;
    let (ch, rate, frames) = (audio.channels, audio.rate, audio.frames());
    let x = &audio.samples;
    let m = normalize::measure_input(x, ch, rate)?;
    let s = &args.settings;
    let plan = normalize::plan(&m, s);
    let desc =
        format!("I {} LUFS, LRA {} LU, TP {} dBTP", json_num(m.integrated), json_num(m.range), json_num(m.true_peak));

    if args.measure {
        let dest = out_base.with_extension("json");
        let json = format!(
            "{{\"file\": {}, \"integrated_lufs\": {}, \"loudness_range_lu\": {}, \"true_peak_dbtp\": {}, \
             \"target_lufs\": {}, \"true_peak_ceiling_dbtp\": {}, \"gain_db\": {}, \"limiting_needed\": {}, \
             \"channels\": {}, \"sample_rate\": {}, \"frames\": {}}}\n",
            json_str(&path.display().to_string()),
            json_num(m.integrated),
            json_num(m.range),
            json_num(m.true_peak),
            json_num(s.target),
            json_num(s.ceiling),
            json_num(plan.gain_db()),
            matches!(plan, Plan::Limit { .. }),
            ch,
            rate,
            frames,
        );
        std::fs::write(&dest, json).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        return Ok(format!("{desc} -> {}", dest.display()));
    }

    let dest = out_base.with_extension(audio.format.extension());
    let what = match plan {
        Plan::Unchanged => {
            encode::write(&dest, audio.format, ch, rate, frames, &mut encode::PlainGain::new(x, ch, 1.0))?;
            "no integrated loudness (silence or under 400 ms): written unchanged, gain 0".to_string()
        }
        Plan::Gain(g) => {
            let lin = meter::from_db(g) as f32;
            encode::write(&dest, audio.format, ch, rate, frames, &mut encode::PlainGain::new(x, ch, lin))?;
            format!("plain gain {g:+.2} dB, TP now {} dBTP", json_num(m.true_peak + g))
        }
        Plan::Limit { gain } => {
            let index = limiter::PeakIndex::new(x, ch);
            let r = normalize::find_limited(x, ch, rate, &index, gain, s)?;
            let mut lim = limiter::Limiter::new(
                x,
                ch,
                rate,
                &index,
                meter::from_db(r.pre_gain_db) as f32,
                meter::from_db(r.limit_db) as f32,
            );
            encode::write(&dest, audio.format, ch, rate, frames, &mut lim)?;
            format!(
                "limited: pre-gain {:+.2} dB (plain would be {gain:+.2}), limit {:.2} dBTP, {} passes, \
                 out I {} LUFS TP {} dBTP, {:.1}% of frames limited, deepest {:.1} dB",
                r.pre_gain_db,
                r.limit_db,
                r.passes,
                json_num(r.out.integrated),
                json_num(r.out.true_peak),
                100.0 * lim.limited_frames as f64 / frames.max(1) as f64,
                meter::to_db(lim.min_gain as f64),
            )
        }
    };
    Ok(format!("{desc}; {what} -> {}", dest.display()))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("audio: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut files = Vec::new();
    if let Err(e) = walk(&args.input, &mut files) {
        eprintln!("audio: {}: cannot list: {e}", args.input.display());
        return ExitCode::from(1);
    }
    let mut failed = 0;
    let mut written: Vec<PathBuf> = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&args.input).unwrap_or(path);
        let out_base = args.output.join(rel);
        // Two inputs in one shard that would write the same output (a.mp3
        // and a.ogg both become a.flac) must not overwrite each other.
        let stem_key = out_base.with_extension("");
        if written.contains(&stem_key) {
            eprintln!("audio: {}: another input already wrote {}.*", path.display(), stem_key.display());
            failed += 1;
            continue;
        }
        if let Some(parent) = out_base.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                eprintln!("audio: {}: cannot create {}: {e}", path.display(), parent.display());
                failed += 1;
                continue;
            }
        }
        match process(path, &out_base, &args) {
            Ok(summary) => {
                written.push(stem_key);
                let mem = peak_memory_mib().map(|m| format!(" [memory {m:.0} MiB]")).unwrap_or_default();
                eprintln!("audio: {}: {summary}{mem}", path.display());
            }
            Err(e) => {
                eprintln!("audio: {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
