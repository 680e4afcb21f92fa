//! Converting between encoded sample bytes and `f32` samples in [-1, 1].

use crate::SampleEncoding;

/// Encodes samples in [-1, 1] as PCM s16le (the same ±32768 scale [`decode_interleaved`] uses), clamping
/// anything outside full scale.
pub fn encode_pcm_s16le(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &s in samples {
        // Clamped to the i16 range first, the cast cannot overflow.
        #[allow(clippy::cast_possible_truncation)]
        let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes samples as f32le without altering them.
pub fn encode_f32le(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 4);
    for &s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Decodes interleaved samples into `f32` in [-1, 1] (for PCM) or as stored (for f32le). Trailing bytes that do
/// not form a whole sample are ignored; validated frames have none.
pub fn decode_interleaved(encoding: SampleEncoding, bytes: &[u8]) -> Vec<f32> {
    match encoding {
        SampleEncoding::PcmS16le => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
        SampleEncoding::F32le => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_round_trip_is_within_one_step() {
        let samples = [0.0, 0.5, -0.5, 0.999, -1.0, 1.0];
        let decoded = decode_interleaved(SampleEncoding::PcmS16le, &encode_pcm_s16le(&samples));
        for (a, b) in samples.iter().zip(&decoded) {
            assert!((a - b).abs() <= 1.0 / 32768.0, "{a} vs {b}");
        }
    }

    #[test]
    fn pcm_clamps_out_of_range() {
        let decoded = decode_interleaved(SampleEncoding::PcmS16le, &encode_pcm_s16le(&[3.0, -3.0]));
        assert!(decoded[0] > 0.999 && decoded[1] < -0.999);
    }

    #[test]
    fn f32_round_trip_is_exact() {
        let samples = [0.25, -0.125, 1e-7];
        assert_eq!(
            decode_interleaved(SampleEncoding::F32le, &encode_f32le(&samples)),
            samples
        );
    }
}
