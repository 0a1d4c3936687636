//! Writing WAV (hound) and FLAC (flacenc), pulling processed audio chunk by
//! chunk so no second full-length copy of the samples is ever held.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use flacenc::component::{BitRepr, Stream};
use flacenc::error::Verify;
use flacenc::source::{Context, Fill, FrameBuf};

use crate::decode::OutFormat;

/// Something that yields interleaved f32 output a chunk at a time.
pub trait Render {
    /// Replaces `out` with the next chunk; false when there is none.
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> bool;
}

impl Render for crate::limiter::Limiter<'_> {
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> bool {
        crate::limiter::Limiter::next_chunk(self, out)
    }
}

/// Constant gain: the plain path, and "unchanged" (gain 1).
pub struct PlainGain<'a> {
    x: &'a [f32],
    gain: f32,
    pos: usize,
    chunk: usize,
}

impl<'a> PlainGain<'a> {
    pub fn new(x: &'a [f32], channels: usize, gain: f32) -> Self {
        PlainGain { x, gain, pos: 0, chunk: crate::limiter::CHUNK_FRAMES * channels }
    }
}

impl Render for PlainGain<'_> {
    fn next_chunk(&mut self, out: &mut Vec<f32>) -> bool {
        out.clear();
        if self.pos >= self.x.len() {
            return false;
        }
        let end = (self.pos + self.chunk).min(self.x.len());
        out.extend(self.x[self.pos..end].iter().map(|&v| v * self.gain));
        self.pos = end;
        true
    }
}

/// Float to integer the way symphonia reads integers back (divide by
/// 2^(bits-1)), rounded, and clamped: lossy decoders can exceed full
/// scale, and an integer format cannot hold that.
fn to_int(v: f32, bits: u32) -> i32 {
    let scale = (1i64 << (bits - 1)) as f64;
    let q = (v as f64 * scale).round();
    q.clamp(-scale, scale - 1.0) as i32
}

pub fn write(
    path: &Path,
    format: OutFormat,
    channels: usize,
    rate: u32,
    frames: usize,
    src: &mut dyn Render,
) -> Result<(), String> {
    match format {
        OutFormat::WavInt(bits) => write_wav(path, channels, rate, Some(bits), src),
        OutFormat::WavFloat => write_wav(path, channels, rate, None, src),
        OutFormat::Flac(bits) => write_flac(path, channels, rate, bits, frames, src),
    }
}

fn write_wav(
    path: &Path,
    channels: usize,
    rate: u32,
    int_bits: Option<u16>,
    src: &mut dyn Render,
) -> Result<(), String> {
    let spec = hound::WavSpec {
        channels: channels as u16,
        sample_rate: rate,
        bits_per_sample: int_bits.unwrap_or(32),
        sample_format: if int_bits.is_some() { hound::SampleFormat::Int } else { hound::SampleFormat::Float },
    };
    let err = |e: hound::Error| format!("writing {}: {e}", path.display());
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    let mut chunk = Vec::new();
    while src.next_chunk(&mut chunk) {
        match int_bits {
            Some(8) => {
                for &v in &chunk {
                    w.write_sample(to_int(v, 8) as i8).map_err(err)?;
                }
            }
            Some(bits) => {
                for &v in &chunk {
                    w.write_sample(to_int(v, bits as u32)).map_err(err)?;
                }
            }
            None => {
                for &v in &chunk {
                    w.write_sample(v).map_err(err)?;
                }
            }
        }
    }
    w.finalize().map_err(err)
}

/// FLAC frames are encoded and written one by one; STREAMINFO (which needs
/// the MD5 and frame sizes of the whole stream) is written as a placeholder
/// first and rewritten at the end, so the encoded stream is never held in
/// memory either.
fn write_flac(
    path: &Path,
    channels: usize,
    rate: u32,
    bits: u32,
    frames: usize,
    src: &mut dyn Render,
) -> Result<(), String> {
    let ioerr = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let fmterr = |e: &dyn std::fmt::Debug| format!("FLAC encoder: {e:?}");
    if channels > 8 {
        return Err(format!("unsupported: FLAC holds at most 8 channels, this has {channels}"));
    }
    // flacenc 0.5.1 sums rice-code costs in u32 and says itself that this
    // overflows for residuals above 2^28; with 24-bit noise-like audio an
    // order-4 fixed predictor gets there (16x the signal) and the encoder
    // then picks a coding of hundreds of MB per frame. Order 2 (4x) stays
    // clear, and any frame still larger than plain PCM is redone verbatim.
    let mut cfg = flacenc::config::Encoder::default();
    if bits > 16 {
        cfg.subframe_coding.fixed.max_order = cfg.subframe_coding.fixed.max_order.min(2);
    }
    let config = cfg.into_verified().map_err(|e| fmterr(&e))?;
    let mut raw = flacenc::config::Encoder::default();
    raw.subframe_coding.use_fixed = false;
    raw.subframe_coding.use_lpc = false;
    let verbatim = raw.into_verified().map_err(|e| fmterr(&e))?;
    let block = config.block_size;
    // A frame of plain PCM plus generous room for headers and CRCs.
    let verbatim_bits = (block * channels * bits as usize + 64 * channels + 256) as u64;
    let mut stream = Stream::new(rate as usize, channels, bits as usize).map_err(|e| fmterr(&e))?;
    stream.stream_info_mut().set_block_sizes(block, block).map_err(|e| fmterr(&e))?;
    let mut fb = (FrameBuf::with_size(channels, block).map_err(|e| fmterr(&e))?, Context::new(bits as usize, channels));

    let mut file = BufWriter::new(File::create(path).map_err(ioerr)?);
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| fmterr(&e))?;
    let header_len = sink.as_slice().len();
    file.write_all(sink.as_slice()).map_err(ioerr)?;

    let mut chunk = Vec::new();
    let mut pending: Vec<i32> = Vec::with_capacity(block * channels * 2);
    let mut eof = false;
    loop {
        while !eof && pending.len() < block * channels {
            if src.next_chunk(&mut chunk) {
                pending.extend(chunk.iter().map(|&v| to_int(v, bits)));
            } else {
                eof = true;
            }
        }
        if pending.is_empty() {
            break;
        }
        let take = pending.len().min(block * channels);
        fb.fill_interleaved(&pending[..take]).map_err(|e| fmterr(&e))?;
        pending.drain(..take);
        let frame_no = fb.1.current_frame_number().ok_or("FLAC encoder: no frame number")?;
        let mut frame =
            flacenc::encode_fixed_size_frame(&config, &fb.0, frame_no, stream.stream_info()).map_err(|e| fmterr(&e))?;
        if frame.count_bits() as u64 > verbatim_bits {
            frame = flacenc::encode_fixed_size_frame(&verbatim, &fb.0, frame_no, stream.stream_info())
                .map_err(|e| fmterr(&e))?;
        }
        stream.stream_info_mut().update_frame_info(&frame);
        sink.clear();
        frame.write(&mut sink).map_err(|e| fmterr(&e))?;
        file.write_all(sink.as_slice()).map_err(ioerr)?;
    }
    let info = stream.stream_info_mut();
    info.set_md5_digest(&fb.1.md5_digest());
    info.set_total_samples(frames);
    sink.clear();
    stream.write(&mut sink).map_err(|e| fmterr(&e))?;
    if sink.as_slice().len() != header_len {
        return Err("FLAC encoder: header size changed".into());
    }
    file.seek(SeekFrom::Start(0)).map_err(ioerr)?;
    file.write_all(sink.as_slice()).map_err(ioerr)?;
    file.flush().map_err(ioerr)?;
    Ok(())
}
