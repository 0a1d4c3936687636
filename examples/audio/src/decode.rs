//! Decoding with symphonia into one interleaved f32 buffer.
//!
//! The whole file is decoded once and kept as f32: the loudness of the
//! whole programme decides the gain, and the limiter path measures its own
//! output several times, so the samples must be at hand more than once.
//! Decoding again for every pass would cost more time than the memory saves.

use std::fs::File;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_NULL, CODEC_TYPE_PCM_ALAW, CODEC_TYPE_PCM_F32LE, CODEC_TYPE_PCM_F64LE,
    CODEC_TYPE_PCM_MULAW, CODEC_TYPE_PCM_S16LE, CODEC_TYPE_PCM_S24LE, CODEC_TYPE_PCM_S32LE, CODEC_TYPE_PCM_S8,
    CODEC_TYPE_PCM_U8,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// What the output is written as; decided by the input's codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    /// WAV with integer samples of this many bits (8, 16, 24, 32).
    WavInt(u16),
    /// WAV with 32-bit float samples.
    WavFloat,
    /// FLAC with this many bits per sample.
    Flac(u32),
}

impl OutFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutFormat::WavInt(_) | OutFormat::WavFloat => "wav",
            OutFormat::Flac(_) => "flac",
        }
    }
}

pub struct Audio {
    pub channels: usize,
    pub rate: u32,
    /// Interleaved, nominally in [-1, 1]; lossy decoders may exceed that.
    pub samples: Vec<f32>,
    pub format: OutFormat,
}

impl Audio {
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels
    }
}

/// MP3 and Vorbis have no bit depth of their own; 24 bits keep everything the
/// decoder produced (its noise floor is far above 24-bit quantisation) while
/// staying in the range every FLAC decoder handles.
const LOSSY_FLAC_BITS: u32 = 24;

pub fn decode(path: &Path) -> Result<Audio, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    // Gapless trimming makes MP3/Vorbis lengths match what ffmpeg decodes
    // (encoder delay and padding removed), so "length is kept" holds.
    let fmt_opts = FormatOptions { enable_gapless: true, ..Default::default() };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &fmt_opts, &MetadataOptions::default())
        .map_err(|e| format!("not audio symphonia can read: {e}"))?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or("not audio symphonia can read: no audio track")?;
    let params = track.codec_params.clone();
    let track_id = track.id;

    let format = match params.codec {
        CODEC_TYPE_PCM_S16LE => OutFormat::WavInt(16),
        CODEC_TYPE_PCM_S24LE => OutFormat::WavInt(24),
        CODEC_TYPE_PCM_S32LE => OutFormat::WavInt(32),
        CODEC_TYPE_PCM_U8 | CODEC_TYPE_PCM_S8 => OutFormat::WavInt(8),
        // hound cannot write 64-bit float; 32-bit float loses nothing audible.
        CODEC_TYPE_PCM_F32LE | CODEC_TYPE_PCM_F64LE => OutFormat::WavFloat,
        CODEC_TYPE_FLAC => {
            let bits = params.bits_per_sample.ok_or("FLAC without a bit depth")?;
            if !(4..=24).contains(&bits) {
                return Err(format!("unsupported: {bits}-bit FLAC (the encoder writes 4-24 bits)"));
            }
            OutFormat::Flac(bits)
        }
        // Companded WAV has no writer here; 16 bits hold all it can carry.
        CODEC_TYPE_PCM_ALAW | CODEC_TYPE_PCM_MULAW => OutFormat::WavInt(16),
        _ => OutFormat::Flac(LOSSY_FLAC_BITS),
    };

    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| format!("unsupported codec: {e}"))?;

    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut rate = params.sample_rate.unwrap_or(0);
    // Reserving the announced length up front avoids the Vec doubling, which
    // would briefly need twice the memory of the audio itself.
    let mut samples: Vec<f32> = Vec::new();
    if let (Some(n), true) = (params.n_frames, channels > 0) {
        let want = (n as usize).saturating_mul(channels);
        if want <= 1 << 30 {
            samples.reserve_exact(want);
        }
    }
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match reader.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("not audio symphonia can read: {e}")),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(|e| format!("not audio symphonia can read: {e}"))?;
        let spec = *decoded.spec();
        if channels == 0 {
            channels = spec.channels.count();
        }
        if rate == 0 {
            rate = spec.rate;
        }
        if spec.channels.count() != channels || spec.rate != rate {
            return Err("unsupported: channel count or sample rate changes mid-stream".into());
        }
        if decoded.frames() == 0 {
            continue;
        }
        let need = decoded.capacity() as u64;
        if buf.as_ref().is_none_or(|b| (b.capacity() as u64) < need * channels as u64) {
            buf = Some(SampleBuffer::new(need, spec));
        }
        let b = buf.as_mut().unwrap();
        b.copy_interleaved_ref(decoded);
        if samples.capacity() - samples.len() < b.samples().len() {
            // Past the announced length: grow by a quarter rather than double.
            samples.reserve_exact((samples.len() / 4).max(b.samples().len()));
        }
        samples.extend_from_slice(b.samples());
    }
    if channels == 0 || rate == 0 {
        return Err("not audio symphonia can read: no channels or sample rate".into());
    }
    if samples.is_empty() {
        return Err("not audio symphonia can read: no samples decoded".into());
    }
    Ok(Audio { channels, rate, samples, format })
}
