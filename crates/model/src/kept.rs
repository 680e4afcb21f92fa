//! The normal recordings a machine's profile was fitted from, kept in the model file as the
//! network heard them, so that enrolling more of the machine's recordings — a new operating
//! pattern, a season — refits the profile on everything it knew and the new clips together, not
//! on the new clips alone.
//!
//! Per clip: its content hash, so that a recording enrolled twice counts once; its windows'
//! embeddings, band means and band peaks, in half precision (within a few hundredths of a decibel
//! for band energies, far below any normal spread) and base64 in the file's JSON, about 0.7 kB a
//! window (14 kB for a ten-second clip); and its waveform's impulsiveness peaks as they are.

use base64::engine::general_purpose::STANDARD;

use crate::features::Waveform;

/// The most windows a machine's profile keeps, about 2,000 ten-second clips (some 28 MB in the
/// file, at about 0.7 kB a window): a machine enrolled over and over keeps its latest recordings,
/// and a model file stays a size a registry can hand out.
pub const MAX_KEPT_WINDOWS: usize = 40_000;

/// What a profile keeps of its normal recordings.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptRecordings {
    pub clips: Vec<KeptClip>,
}

/// One normal clip as the network heard it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptClip {
    /// SHA-256 of the recording's content; empty where it was not known.
    #[serde(default)]
    pub content_sha256: String,
    #[serde(with = "half_base64")]
    pub embeddings: Vec<f32>,
    #[serde(with = "half_base64")]
    pub band_means: Vec<f32>,
    #[serde(with = "half_base64")]
    pub band_peaks: Vec<f32>,
    pub waveform: Waveform,
}

impl KeptClip {
    /// The clip at the precision the file stores it in, so that a profile compares equal to
    /// itself read back from its file.
    pub fn as_stored(self) -> Self {
        let round = |values: Vec<f32>| -> Vec<f32> {
            values
                .into_iter()
                .map(|v| half::f16::from_f32(v).to_f32())
                .collect()
        };
        Self {
            content_sha256: self.content_sha256,
            embeddings: round(self.embeddings),
            band_means: round(self.band_means),
            band_peaks: round(self.band_peaks),
            waveform: self.waveform,
        }
    }
}

impl KeptRecordings {
    pub fn len(&self) -> usize {
        self.clips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }
}

/// `Vec<f32>` as little-endian IEEE half-precision values, base64: a third of the size of the same
/// numbers in JSON and exact to three significant digits.
mod half_base64 {
    use super::STANDARD;
    use base64::Engine as _;
    use half::f16;

    pub fn serialize<S: serde::Serializer>(
        values: &[f32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<f32>, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("kept recording values: {e}")))?;
        if bytes.len() % 2 != 0 {
            return Err(serde::de::Error::custom(
                "kept recording values: an odd number of bytes is no half-precision array",
            ));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|pair| f16::from_le_bytes([pair[0], pair[1]]).to_f32())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_clips_come_back_to_within_half_precision() {
        let clip = |offset: f32| KeptClip {
            content_sha256: String::new(),
            embeddings: vec![0.125 + offset, -0.5, 0.333],
            band_means: vec![-45.678 - offset, -80.01],
            band_peaks: vec![-30.5, f32::NEG_INFINITY],
            waveform: Waveform::measure(&[0.1, -0.2, 0.05]),
        };
        let kept = KeptRecordings {
            clips: vec![clip(0.0), clip(2.0)],
        };
        let json = serde_json::to_string(&kept).expect("serialise");
        let back: KeptRecordings = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back.len(), 2);
        for (a, b) in back.clips.iter().zip(&kept.clips) {
            for (x, y) in a.band_means.iter().zip(&b.band_means) {
                assert!(
                    (x - y).abs() <= 0.04,
                    "{x} vs {y}: within a few hundredths of a dB"
                );
            }
            assert_eq!(a.waveform, b.waveform, "waveforms are kept as they are");
        }
        assert_eq!(
            back.clips[1].embeddings[0], 2.125,
            "exact where half precision is"
        );
        assert_eq!(back.clips[0].band_peaks[1], f32::NEG_INFINITY);
        let stored = KeptRecordings {
            clips: kept
                .clips
                .iter()
                .cloned()
                .map(KeptClip::as_stored)
                .collect(),
        };
        assert_eq!(back, stored, "what is stored reads back exactly");
        let broken = json.replacen("\"embeddings\":\"", "\"embeddings\":\"A", 1);
        let error = serde_json::from_str::<KeptRecordings>(&broken).expect_err("bad base64");
        assert!(
            error.to_string().contains("kept recording values"),
            "{error}"
        );
    }
}
