//! BS.1770 / EBU R128 measurement with the `ebur128` crate.

use ebur128::{EbuR128, Mode};

/// Frames fed to the meter at once; small enough to stay in cache.
const CHUNK_FRAMES: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// Integrated loudness in LUFS; `-inf` when nothing passes the gates
    /// (silence, or shorter than one 400 ms block).
    pub integrated: f64,
    /// Loudness range in LU (0 when too short to tell).
    pub range: f64,
    /// Largest true peak over all channels, dBTP (`-inf` for digital silence).
    pub true_peak: f64,
}

/// A meter that is fed chunk by chunk, so processed audio can be measured
/// as it is produced instead of being stored first.
pub struct Meter {
    inner: EbuR128,
    channels: usize,
    with_range: bool,
}

impl Meter {
    pub fn new(channels: usize, rate: u32, with_range: bool) -> Result<Self, String> {
        let mut mode = Mode::I | Mode::TRUE_PEAK;
        if with_range {
            mode |= Mode::LRA;
        }
        let inner = EbuR128::new(channels as u32, rate, mode).map_err(|e| format!("loudness meter: {e:?}"))?;
        Ok(Meter { inner, channels, with_range })
    }

    pub fn add(&mut self, interleaved: &[f32]) -> Result<(), String> {
        self.inner.add_frames_f32(interleaved).map_err(|e| format!("loudness meter: {e:?}"))
    }

    pub fn finish(&self) -> Result<Measurement, String> {
        let err = |e: ebur128::Error| format!("loudness meter: {e:?}");
        let integrated = self.inner.loudness_global().map_err(err)?;
        let range = if self.with_range { self.inner.loudness_range().map_err(err)? } else { 0.0 };
        let mut peak = 0.0f64;
        for c in 0..self.channels {
            peak = peak.max(self.inner.true_peak(c as u32).map_err(err)?);
        }
        Ok(Measurement { integrated, range, true_peak: to_db(peak) })
    }
}

/// Measures a whole interleaved buffer, scaled by `gain` (linear).
pub fn measure(samples: &[f32], channels: usize, rate: u32, gain: f32) -> Result<Measurement, String> {
    let mut m = Meter::new(channels, rate, true)?;
    if gain == 1.0 {
        for chunk in samples.chunks(CHUNK_FRAMES * channels) {
            m.add(chunk)?;
        }
    } else {
        let mut tmp = Vec::with_capacity(CHUNK_FRAMES * channels);
        for chunk in samples.chunks(CHUNK_FRAMES * channels) {
            tmp.clear();
            tmp.extend(chunk.iter().map(|&s| s * gain));
            m.add(&tmp)?;
        }
    }
    m.finish()
}

pub fn to_db(linear: f64) -> f64 {
    if linear > 0.0 {
        20.0 * linear.log10()
    } else {
        f64::NEG_INFINITY
    }
}

pub fn from_db(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amp: f64, rate: u32, secs: f64, channels: usize) -> Vec<f32> {
        let n = (rate as f64 * secs) as usize;
        let mut v = Vec::with_capacity(n * channels);
        for i in 0..n {
            let s = (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32;
            for _ in 0..channels {
                v.push(s);
            }
        }
        v
    }

    /// ffmpeg 5.1's `ebur128` filter on `sox -n -r 48000 -c 2 -b 24 t.wav
    /// synth 20 sine 1000 gain -23` reads I = -23.0 LUFS (sox's gain is
    /// relative to full-scale amplitude). So a stereo 1 kHz sine of
    /// amplitude A reads 20 log10(A) + 0.0 LUFS to within 0.1 LU: the
    /// -0.691 offset, +3.01 dB of a second channel, -3.01 dB sine RMS and
    /// about +0.69 dB of K-weighting at 1 kHz cancel out.
    #[test]
    fn stereo_1khz_sine_reads_expected_lufs() {
        let amp = from_db(-23.0);
        let m = measure(&sine(1000.0, amp, 48000, 10.0, 2), 2, 48000, 1.0).unwrap();
        assert!((m.integrated - -23.0).abs() < 0.1, "I = {}", m.integrated);
        assert!((m.true_peak - -23.0).abs() < 0.1, "TP = {}", m.true_peak);
        // A steady tone has no loudness range to speak of.
        assert!(m.range < 0.5, "LRA = {}", m.range);
    }

    /// The mono channel counts once (weight 1.0, no +3 dB), as in BS.1770.
    #[test]
    fn mono_sine_reads_3db_lower_than_stereo() {
        let amp = from_db(-20.0);
        let mono = measure(&sine(1000.0, amp, 44100, 5.0, 1), 1, 44100, 1.0).unwrap();
        let stereo = measure(&sine(1000.0, amp, 44100, 5.0, 2), 2, 44100, 1.0).unwrap();
        assert!((stereo.integrated - mono.integrated - 3.01).abs() < 0.05);
    }

    #[test]
    fn silence_has_no_integrated_loudness() {
        let m = measure(&vec![0.0; 48000 * 2 * 3], 2, 48000, 1.0).unwrap();
        assert!(m.integrated.is_infinite() && m.integrated < 0.0);
        assert!(m.true_peak.is_infinite());
        // Shorter than one gating block: no loudness either.
        let m = measure(&sine(1000.0, 0.5, 48000, 0.2, 2), 2, 48000, 1.0).unwrap();
        assert!(m.integrated.is_infinite());
    }
}
