//! Lossless storage of 16-bit PCM frames as FLAC. Machine sound compresses to about half (measured on the
//! recordings in `bench/compression/`), which halves the disk and the WAL a frame costs; each frame is a
//! complete FLAC stream, so it decodes on its own.

use flacenc::{component::BitRepr, error::Verify};

/// Why a frame could not be compressed or a stored one decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlacError {
    #[error("FLAC encoder: {0}")]
    Encode(String),
    #[error("stored FLAC frame is damaged: {0}")]
    Decode(String),
    #[error("stored FLAC frame holds {found}, not the {expected} recorded beside it")]
    Mismatch { found: String, expected: String },
}

/// FLAC blocks shorter than this are only allowed at the end of a stream, and decoders refuse a stream
/// whose last block is shorter (its STREAMINFO then declares a minimum block size below the format's).
const MIN_BLOCK: usize = 16;
/// The encoder's usual block size (about a quarter second at 16 kHz).
const BLOCK: usize = 4_096;

/// Whether a frame of this many samples per channel can be stored as FLAC: anything from 16 samples on.
pub const fn compressible(samples_per_channel: usize) -> bool {
    samples_per_channel >= MIN_BLOCK
}

/// The block size for a frame of `n` samples per channel: the usual one, shortened just enough that the
/// last block is not shorter than [`MIN_BLOCK`].
fn block_size(n: usize) -> usize {
    (BLOCK - MIN_BLOCK..=BLOCK)
        .rev()
        .find(|b| n.is_multiple_of(*b) || n % b >= MIN_BLOCK)
        .unwrap_or(BLOCK)
}

/// Compresses interleaved 16-bit little-endian PCM of at least [`MIN_BLOCK`] samples per channel.
pub fn encode_pcm_s16le(
    samples: &[u8],
    channels: u16,
    sample_rate_hz: u32,
) -> Result<Vec<u8>, FlacError> {
    let per_channel = samples.len() / 2 / usize::from(channels.max(1));
    if !compressible(per_channel) {
        return Err(FlacError::Encode(format!(
            "{per_channel} samples per channel; FLAC needs at least {MIN_BLOCK}"
        )));
    }
    let values: Vec<i32> = samples
        .chunks_exact(2)
        .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    let mut config = flacenc::config::Encoder::default();
    // One frame is one second: splitting it across threads costs more than it saves, and ingest already
    // compresses many streams' frames at once.
    config.multithread = false;
    // Fixed predictors only (libFLAC's levels 0–2 do the same): on machine sound they compress within 2 %
    // of the LPC search (1.80 against 1.83 on the shared recordings) for a third of its CPU.
    config.subframe_coding.use_lpc = false;
    let config = config
        .into_verified()
        .map_err(|(_, e)| FlacError::Encode(e.to_string()))?;
    let source = flacenc::source::MemSource::from_samples(
        &values,
        usize::from(channels),
        16,
        usize::try_from(sample_rate_hz).unwrap_or(usize::MAX),
    );
    let stream = flacenc::encode_with_fixed_block_size(&config, source, block_size(per_channel))
        .map_err(|e| FlacError::Encode(format!("{e:?}")))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream
        .write(&mut sink)
        .map_err(|e| FlacError::Encode(format!("{e:?}")))?;
    Ok(sink.as_slice().to_vec())
}

/// The most PCM one stored frame decodes to: ingest accepts no message above 64 MiB.
const MAX_DECODED_BYTES: usize = 64 << 20;

/// Decodes a stored FLAC frame back to the interleaved 16-bit little-endian PCM that was received, checking
/// that it holds what its row says.
pub fn decode_to_pcm_s16le(
    flac: &[u8],
    channels: u16,
    sample_rate_hz: u32,
) -> Result<Vec<u8>, FlacError> {
    let mut reader = claxon::FlacReader::new(std::io::Cursor::new(flac))
        .map_err(|e| FlacError::Decode(e.to_string()))?;
    let info = reader.streaminfo();
    if info.channels != u32::from(channels)
        || info.sample_rate != sample_rate_hz
        || info.bits_per_sample != 16
    {
        return Err(FlacError::Mismatch {
            found: format!(
                "{} channel(s) at {} Hz, {} bits",
                info.channels, info.sample_rate, info.bits_per_sample
            ),
            expected: format!("{channels} channel(s) at {sample_rate_hz} Hz, 16 bits"),
        });
    }
    // The header's sample count is only a claim: a damaged or hostile stream may claim any size, and a
    // few bytes of constant blocks decode to megabytes. What a frame can hold bounds both the buffer and
    // the output.
    let declared = info
        .samples
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| n.checked_mul(usize::from(channels) * 2));
    let limit = declared.map_or(MAX_DECODED_BYTES, |d| d.min(MAX_DECODED_BYTES));
    let mut pcm = Vec::with_capacity(limit.min(1 << 20));
    for sample in reader.samples() {
        if pcm.len() >= limit {
            return Err(FlacError::Decode(format!(
                "more samples than the stream declares or a frame may hold ({limit} bytes)"
            )));
        }
        let sample = sample.map_err(|e| FlacError::Decode(e.to_string()))?;
        let sample = i16::try_from(sample)
            .map_err(|_| FlacError::Decode(format!("sample {sample} is not 16-bit")))?;
        pcm.extend_from_slice(&sample.to_le_bytes());
    }
    if let Some(declared) = declared
        && pcm.len() != declared
    {
        return Err(FlacError::Decode(format!(
            "the stream holds {} bytes of samples but declares {declared}",
            pcm.len()
        )));
    }
    Ok(pcm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(values: &[i16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Found by the `stored_flac` fuzz target: a header claiming 34 GB of samples made the decoder
    /// reserve them all at once and abort.
    #[test]
    fn a_stream_claiming_more_samples_than_it_holds_is_refused_without_reserving_them() {
        let input = include_bytes!("../tests/fuzz/stored_flac_claims_34_gb.bin");
        let (shape, flac) = input.split_first().expect("input");
        let channels = u16::from(shape % 4 + 1);
        // Before the fix this aborted the process (a 34 GB allocation); now it is an error like any other.
        let error = decode_to_pcm_s16le(flac, channels, 16_000).expect_err("refused");
        assert!(matches!(error, FlacError::Decode(_)), "{error}");
    }

    #[test]
    fn frames_come_back_bit_for_bit() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 48) as i16
        };
        let cases: Vec<(Vec<i16>, u16, u32)> = vec![
            // Full-scale white noise: incompressible, still exact.
            ((0..16_000).map(|_| noise()).collect(), 1, 16_000),
            // Silence, the extremes, a tone: the edges of every predictor.
            (vec![0; 16_000], 1, 16_000),
            (
                (0..16_000)
                    .map(|i| if i % 2 == 0 { i16::MIN } else { i16::MAX })
                    .collect(),
                1,
                16_000,
            ),
            (
                (0..96_000)
                    .map(|i| ((i as f32 * 0.05).sin() * 12_000.0) as i16)
                    .collect(),
                2,
                48_000,
            ),
            // Shorter than one FLAC block, and eight channels.
            ((0..800).map(|_| noise()).collect(), 8, 16_000),
        ];
        for (values, channels, rate) in cases {
            let raw = pcm(&values);
            let flac = encode_pcm_s16le(&raw, channels, rate).expect("encode");
            assert_eq!(
                decode_to_pcm_s16le(&flac, channels, rate).expect("decode"),
                raw,
                "{channels} channel(s) at {rate} Hz"
            );
        }
    }

    #[test]
    fn every_length_round_trips_or_is_refused_up_front() {
        // Short frames, lengths whose last block would be tiny, and a sweep of odd lengths.
        let lengths = (1..=80)
            .chain((1..=5).flat_map(|k| (k * BLOCK - 20)..=(k * BLOCK + 20)))
            .chain((100..20_000).step_by(997));
        for channels in [1u16, 2, 3] {
            for n in lengths.clone() {
                let raw: Vec<u8> = (0..n * usize::from(channels))
                    .flat_map(|i| ((i * 37 % 1_000) as i16 - 500).to_le_bytes())
                    .collect();
                match encode_pcm_s16le(&raw, channels, 16_000) {
                    Ok(flac) => assert_eq!(
                        decode_to_pcm_s16le(&flac, channels, 16_000).as_deref(),
                        Ok(&raw[..]),
                        "{n} samples × {channels} channel(s)"
                    ),
                    Err(_) => assert!(!compressible(n), "{n} samples refused"),
                }
            }
        }
    }

    #[test]
    fn a_tone_takes_far_less_room() {
        let raw = pcm(&(0..16_000)
            .map(|i| ((i as f32 * 0.07).sin() * 8_000.0) as i16)
            .collect::<Vec<_>>());
        let flac = encode_pcm_s16le(&raw, 1, 16_000).expect("encode");
        assert!(
            flac.len() * 3 < raw.len(),
            "{} of {}",
            flac.len(),
            raw.len()
        );
    }

    #[test]
    fn damage_and_disagreement_are_errors() {
        let raw = pcm(&(0..1_600).map(|i| (i % 300) as i16).collect::<Vec<_>>());
        let flac = encode_pcm_s16le(&raw, 1, 16_000).expect("encode");
        assert_eq!(
            decode_to_pcm_s16le(&flac, 1, 16_000).as_deref(),
            Ok(&raw[..])
        );
        let other = decode_to_pcm_s16le(&flac, 2, 16_000);
        assert!(
            matches!(other, Err(FlacError::Mismatch { .. })),
            "{other:?}"
        );
        assert!(matches!(
            decode_to_pcm_s16le(&flac[..10], 1, 16_000),
            Err(FlacError::Decode(_))
        ));
        assert!(matches!(
            decode_to_pcm_s16le(b"not flac at all", 1, 16_000),
            Err(FlacError::Decode(_))
        ));
    }
}
