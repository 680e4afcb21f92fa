//! The model file: everything scoring needs, in one file that can be copied, published and
//! compared.
//!
//! Layout: the magic `AUSCULTM`, a little-endian `u32` format number, then two length-prefixed
//! (`u64`) sections — the metadata as JSON (configuration, classes, normalisation, machine
//! profiles, training record) and the network weights as a burn record, large tensors stored in
//! half precision.

use crate::ModelError;
pub use crate::info::{ClassLabel, EpochRecord, ModelInfo, TrainingRecord};

const MAGIC: &[u8; 8] = b"AUSCULTM";
/// Bumped when an older reader could not understand the file, which it must refuse rather than
/// misjudge. Format 2: profiles may judge the clip spectrum by its contour
/// (`SpectrumForm::Contour`); a format-1 reader would ignore that and compare level spectra with
/// contour statistics. Format 3: profiles may draw a clip's band peaks as the upper quartile over
/// its windows (`PeakStatistic::UpperQuartile`); a format-2 reader would compare the loudest
/// window's peaks with statistics of the quartile. Format 4: impulse scales may be judged against
/// a two-piece range (`TwoSided::below`, `above`); a format-3 reader would judge them against one
/// spread around the median, which their ranges were not calibrated for. Format 5: the
/// impulsiveness may be judged on each side against its own range
/// (`MachineProfile::impulsiveness_sides`); a format-4 reader would add both sides up against a
/// range of 1.
pub const FORMAT: u32 = 5;
/// The oldest format this build still reads: every field added since has a default that keeps an
/// older file's verdicts — but one: a machine that an older file judged by its type's profile,
/// fitted from one other machine, is unknown now (`MachineProfile::machines`).
const OLDEST_FORMAT: u32 = 1;
/// A model file larger than this is not one of ours.
const MAX_SECTION: u64 = 512 << 20;

/// Writes the file's bytes.
pub fn encode(info: &ModelInfo, weights: &[u8]) -> Result<Vec<u8>, ModelError> {
    let json =
        serde_json::to_vec(info).map_err(|e| ModelError::Format(format!("metadata: {e}")))?;
    // A file no reader would accept is not written.
    for (what, len) in [("metadata", json.len()), ("weights", weights.len())] {
        if len as u64 > MAX_SECTION {
            return Err(ModelError::Format(format!(
                "{what} of {len} bytes exceed the {MAX_SECTION} a model file may hold"
            )));
        }
    }
    let mut out = Vec::with_capacity(24 + json.len() + weights.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    out.extend_from_slice(weights);
    Ok(out)
}

/// Splits a file's bytes into metadata and weights.
pub fn decode(bytes: &[u8]) -> Result<(ModelInfo, &[u8]), ModelError> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| ModelError::Format("not an auscult model file (bad magic)".into()))?;
    let (format, rest) = take(rest, 4, "format number")?;
    let format = u32::from_le_bytes(format.try_into().unwrap_or_default());
    if !(OLDEST_FORMAT..=FORMAT).contains(&format) {
        return Err(ModelError::Format(format!(
            "model file format {format}; this build reads formats {OLDEST_FORMAT} to {FORMAT}"
        )));
    }
    let (json, rest) = section(rest, "metadata")?;
    let (weights, rest) = section(rest, "weights")?;
    if !rest.is_empty() {
        return Err(ModelError::Format(format!(
            "{} unexpected bytes at the end",
            rest.len()
        )));
    }
    let mut info: ModelInfo =
        serde_json::from_slice(json).map_err(|e| ModelError::Format(format!("metadata: {e}")))?;
    info.list_type_profile_machines();
    // Scoring selects a frame's channel by it; a value nothing can select is refused here.
    info.channel
        .parse::<auscult_audio::ChannelChoice>()
        .map_err(|e| ModelError::Format(format!("metadata: {e}")))?;
    Ok((info, weights))
}

fn take<'a>(bytes: &'a [u8], n: usize, what: &str) -> Result<(&'a [u8], &'a [u8]), ModelError> {
    if bytes.len() < n {
        return Err(ModelError::Format(format!("truncated inside the {what}")));
    }
    Ok(bytes.split_at(n))
}

fn section<'a>(bytes: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), ModelError> {
    let (len, rest) = take(bytes, 8, what)?;
    let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
    if len > MAX_SECTION {
        return Err(ModelError::Format(format!(
            "{what} section claims {len} bytes"
        )));
    }
    take(rest, len as usize, what)
}
