//! The timeline plot (`fanout report --plot FILE.svg`): every shard's final attempt drawn
//! as a bar on its worker's lane, green when it succeeded and red when it failed. Owns only
//! the drawing; the records come from the manifest.

use crate::manifest::{ShardRecord, ShardStatus};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

const WIDTH: f64 = 1000.0;
const LANE: f64 = 18.0;
const MARGIN: f64 = 60.0;

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// Renders the records as an SVG document.
pub fn svg(records: &BTreeMap<u64, ShardRecord>, title: &str) -> anyhow::Result<String> {
    let spans: Vec<(&ShardRecord, SystemTime, SystemTime)> =
        records.values().filter_map(|r| Some((r, parse_time(&r.started)?, parse_time(&r.finished)?))).collect();
    if spans.is_empty() {
        anyhow::bail!("no shard has run yet: nothing to plot");
    }
    let start = spans.iter().map(|s| s.1).min().expect("non-empty");
    let end = spans.iter().map(|s| s.2).max().expect("non-empty");
    let total = end.duration_since(start).unwrap_or_default().as_secs_f64().max(1e-3);
    let workers: Vec<u32> = {
        let mut w: Vec<u32> = spans.iter().map(|s| s.0.worker).collect();
        w.sort_unstable();
        w.dedup();
        w
    };
    let lane_of = |worker: u32| workers.iter().position(|&w| w == worker).unwrap_or(0) as f64;
    let height = MARGIN + LANE * workers.len() as f64 + 30.0;
    let x = |t: SystemTime| {
        MARGIN + (t.duration_since(start).unwrap_or_default().as_secs_f64() / total) * (WIDTH - 2.0 * MARGIN)
    };
    let mut out = String::new();
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    )?;
    writeln!(out, r#"<text x="{MARGIN}" y="20">{} — {} shards, {:.2}s</text>"#, escape(title), spans.len(), total)?;
    for (i, worker) in workers.iter().enumerate() {
        writeln!(out, r#"<text x="4" y="{:.1}">worker {worker}</text>"#, MARGIN + LANE * i as f64 + 12.0)?;
    }
    for (record, started, finished) in &spans {
        let left = x(*started);
        let width = (x(*finished) - left).max(0.5);
        let colour = if record.status == ShardStatus::Ok { "#3a9a4a" } else { "#c0392b" };
        writeln!(
            out,
            r#"<rect x="{left:.2}" y="{:.1}" width="{width:.2}" height="{:.1}" fill="{colour}"><title>shard {} {} {}ms</title></rect>"#,
            MARGIN + LANE * lane_of(record.worker),
            LANE - 4.0,
            record.shard,
            record.outcome,
            record.duration_ms
        )?;
    }
    writeln!(out, "</svg>")?;
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
