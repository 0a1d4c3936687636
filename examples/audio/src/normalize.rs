//! Choosing what to do with a file: nothing, a plain gain, or gain plus
//! the true-peak limiter, with the limiter's pre-gain found by measuring.

use crate::encode::Render;
use crate::limiter::{Limiter, PeakIndex};
use crate::meter::{self, from_db, Measurement, Meter};

/// A plain gain is only taken when it leaves the true peak this far under
/// the ceiling; closer than that the limiter path decides.
pub const SAFETY_DB: f64 = 0.1;
/// The written file is measured by others: ffmpeg resamples to 192 kHz for
/// its true peak, which for 44.1 kHz input is not the 4x grid the limiter
/// checks, and reads clicks with energy near Nyquist up to ~0.15 dB higher
/// (measured: -0.95 dBTP for a file limited at -1.10 on the 4x grid). The
/// limiter aims this much under the ceiling.
pub const LIMIT_SAFETY_DB: f64 = 0.2;
/// Measurement passes of the limiter path at most (each one limits and
/// measures the whole file).
const MAX_PASSES: usize = 4;
/// Stop iterating once our own meter reads this close to the target.
const GOOD_ENOUGH_LU: f64 = 0.05;
/// Loudness cannot be bought with unbounded limiting; past this much gain
/// above the plain gain the result would be a square wave, not audio.
const MAX_EXTRA_GAIN_DB: f64 = 24.0;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub target: f64,
    pub ceiling: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Plan {
    /// No integrated loudness (silence or too short): leave it alone.
    Unchanged,
    /// Gain in dB; the true peak stays under the ceiling.
    Gain(f64),
    /// Plain gain would push the true peak over the ceiling.
    Limit { gain: f64 },
}

impl Plan {
    pub fn gain_db(&self) -> f64 {
        match *self {
            Plan::Unchanged => 0.0,
            Plan::Gain(g) | Plan::Limit { gain: g } => g,
        }
    }
}

/// The plain gain is used when the predicted true peak stays at least
/// `SAFETY_DB` under the ceiling; a file closer than that goes through the
/// limiter, which then barely acts and still lands on the target.
pub fn plan(m: &Measurement, s: &Settings) -> Plan {
    if !m.integrated.is_finite() {
        return Plan::Unchanged;
    }
    let gain = s.target - m.integrated;
    if m.true_peak + gain <= s.ceiling - SAFETY_DB {
        Plan::Gain(gain)
    } else {
        Plan::Limit { gain }
    }
}

/// How the limiter path ended up.
#[derive(Clone, Copy, Debug)]
pub struct LimitResult {
    pub pre_gain_db: f64,
    pub limit_db: f64,
    pub passes: usize,
    /// Our meter's reading of the output that will be written.
    pub out: Measurement,
}

fn measure_limited(
    x: &[f32],
    channels: usize,
    rate: u32,
    index: &PeakIndex,
    pre_db: f64,
    limit_db: f64,
) -> Result<Measurement, String> {
    let mut lim = Limiter::new(x, channels, rate, index, from_db(pre_db) as f32, from_db(limit_db) as f32);
    let mut meter = Meter::new(channels, rate, false)?;
    let mut chunk = Vec::new();
    while Render::next_chunk(&mut lim, &mut chunk) {
        meter.add(&chunk)?;
    }
    meter.finish()
}

/// Finds the pre-gain that, after limiting at `ceiling - LIMIT_SAFETY_DB`, lands
/// on the target. Limiting takes loudness away, so the plain gain falls
/// short; each pass measures the real output and corrects the pre-gain by
/// the secant through the last two passes (the loudness-vs-gain slope is
/// below 1 and shrinks the harder the limiter works).
pub fn find_limited(
    x: &[f32],
    channels: usize,
    rate: u32,
    index: &PeakIndex,
    gain: f64,
    s: &Settings,
) -> Result<LimitResult, String> {
    let mut limit_db = s.ceiling - LIMIT_SAFETY_DB;
    let max_pre = gain + MAX_EXTRA_GAIN_DB;
    let mut pre = gain;
    let mut prev: Option<(f64, f64)> = None;
    let mut best: Option<LimitResult> = None;
    for pass in 1..=MAX_PASSES {
        let out = measure_limited(x, channels, rate, index, pre, limit_db)?;
        // Our meter's true peak (4x, its own filter) may see a little more
        // than the limiter's detector; pull the limit down by the excess.
        if out.true_peak > s.ceiling - LIMIT_SAFETY_DB / 2.0 {
            limit_db -= out.true_peak - (s.ceiling - LIMIT_SAFETY_DB);
        }
        let err = s.target - out.integrated;
        let tp_ok = out.true_peak <= s.ceiling - LIMIT_SAFETY_DB / 2.0;
        let r = LimitResult { pre_gain_db: pre, limit_db, passes: pass, out };
        if tp_ok && best.is_none_or(|b| err.abs() < (s.target - b.out.integrated).abs()) {
            best = Some(r);
        }
        if tp_ok && err.abs() < GOOD_ENOUGH_LU {
            break;
        }
        let slope = match prev {
            Some((p0, i0)) if (pre - p0).abs() > 1e-6 => ((out.integrated - i0) / (pre - p0)).clamp(0.05, 1.0),
            _ => 1.0,
        };
        prev = Some((pre, out.integrated));
        pre = (pre + err / slope).min(max_pre);
    }
    // Every pass read over the ceiling (should not happen: the limit is
    // lowered each time); one more at the lowered limit is safe to use.
    match best {
        Some(b) => Ok(b),
        None => {
            let out = measure_limited(x, channels, rate, index, pre, limit_db)?;
            Ok(LimitResult { pre_gain_db: pre, limit_db, passes: MAX_PASSES + 1, out })
        }
    }
}

/// Measures the input: integrated loudness, loudness range, true peak.
pub fn measure_input(x: &[f32], channels: usize, rate: u32) -> Result<Measurement, String> {
    meter::measure(x, channels, rate, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::PlainGain;

    fn tone(amp: f32, rate: u32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let v = amp * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / rate as f32).sin();
                [v, v]
            })
            .collect()
    }

    /// The plain path multiplies every sample by exactly 10^(gain/20) and
    /// lands on the target to within a hundredth of an LU.
    #[test]
    fn plain_gain_is_exact() {
        let x = tone(0.03, 48000, 6.0); // about -30.5 LUFS, peaks -30.5 dBTP
        let s = Settings { target: -16.0, ceiling: -1.0 };
        let m = measure_input(&x, 2, 48000).unwrap();
        let Plan::Gain(g) = plan(&m, &s) else { panic!("expected plain gain, got {:?}", plan(&m, &s)) };
        assert!((g - (-16.0 - m.integrated)).abs() < 1e-12);
        let lin = from_db(g) as f32;
        let mut r = PlainGain::new(&x, 2, lin);
        let (mut out, mut chunk) = (Vec::new(), Vec::new());
        while r.next_chunk(&mut chunk) {
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out.len(), x.len());
        assert!(x.iter().zip(&out).all(|(a, b)| a * lin == *b));
        let after = measure_input(&out, 2, 48000).unwrap();
        assert!((after.integrated - -16.0).abs() < 0.01, "I = {}", after.integrated);
    }

    #[test]
    fn silence_is_left_alone() {
        let m = measure_input(&vec![0.0; 96000], 2, 48000).unwrap();
        assert_eq!(plan(&m, &Settings { target: -16.0, ceiling: -1.0 }), Plan::Unchanged);
    }

    /// A quiet bed with loud clicks: +14 dB of plain gain would put the
    /// clicks far over the ceiling, so the limiter path must both hold the
    /// ceiling and reach the target.
    #[test]
    fn limited_path_reaches_target_under_ceiling() {
        let rate = 48000;
        let mut x = tone(0.02, rate, 8.0);
        for k in (0..x.len() / 2).step_by(rate as usize / 4) {
            for j in 0..6 {
                if k + j < x.len() / 2 {
                    let v = if j % 2 == 0 { 0.89 } else { -0.89 };
                    x[2 * (k + j)] = v;
                    x[2 * (k + j) + 1] = v;
                }
            }
        }
        let s = Settings { target: -16.0, ceiling: -1.0 };
        let m = measure_input(&x, 2, rate).unwrap();
        let Plan::Limit { gain } = plan(&m, &s) else { panic!("expected limiting") };
        let index = PeakIndex::new(&x, 2);
        let r = find_limited(&x, 2, rate, &index, gain, &s).unwrap();
        assert!((r.out.integrated - -16.0).abs() < 0.1, "{r:?}");
        assert!(r.out.true_peak <= -1.0, "{r:?}");
    }
}
