//! Labelled clips in memory, and the file-level splits training and evaluation rely on.
//!
//! Splits are drawn per stratum (machine, operating pattern, label) in an order given by a hash of
//! the seed and each file's *content*, so they are reproducible, balanced, and independent of file
//! names; and whole files go to one side, never windows of one clip to both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use auscult_audio::manifest::{Label, Recording};
use auscult_audio::{AudioError, AudioLimits, ChannelChoice};
use sha2::{Digest, Sha256};

/// A recording decoded to the model's sample rate. Cloning shares the samples: protocols hand
/// the same clips to several rounds of training.
#[derive(Debug, Clone)]
pub struct Clip {
    pub recording: Recording,
    /// SHA-256 of the file's bytes: identifies the recording wherever it is stored.
    pub content_sha256: String,
    pub samples: Arc<[f32]>,
}

/// What identifies a machine: its type and id.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MachineKey {
    pub machine_type: String,
    pub machine_id: String,
}

impl std::fmt::Display for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.machine_type, self.machine_id)
    }
}

impl Clip {
    pub fn machine(&self) -> MachineKey {
        MachineKey {
            machine_type: self.recording.machine_type.clone(),
            machine_id: self.recording.machine_id.clone(),
        }
    }

    pub fn is_anomaly(&self) -> bool {
        self.recording.label == Label::Anomaly
    }
}

/// Decodes `recordings` on all cores; `progress` is called once per finished file.
pub fn load_clips(
    recordings: &[Recording],
    channel: ChannelChoice,
    sample_rate: u32,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<Clip>, AudioError> {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = recordings.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = recordings
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|recording| {
                            let clip = load_clip(recording, channel, sample_rate);
                            progress();
                            clip
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut clips = Vec::with_capacity(recordings.len());
        for handle in handles {
            match handle.join() {
                Ok(part) => clips.extend(part?),
                Err(_) => {
                    return Err(AudioError {
                        path: PathBuf::new(),
                        problem: "a decoding thread panicked".into(),
                    });
                }
            }
        }
        Ok(clips)
    })
}

fn load_clip(
    recording: &Recording,
    channel: ChannelChoice,
    sample_rate: u32,
) -> Result<Clip, AudioError> {
    let bytes = std::fs::read(&recording.path).map_err(|e| AudioError {
        path: recording.path.clone(),
        problem: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file (listed in the manifest)".into()
        } else {
            format!("cannot read: {e}")
        },
    })?;
    let content_sha256 = hex::encode(Sha256::digest(&bytes));
    drop(bytes);
    let audio = auscult_audio::load(
        &recording.path,
        channel,
        sample_rate,
        AudioLimits::default(),
    )?;
    Ok(Clip {
        recording: recording.clone(),
        content_sha256,
        samples: audio.samples.into(),
    })
}

/// The stratum a clip is balanced within.
fn stratum(recording: &Recording) -> (String, String, String, Label) {
    (
        recording.machine_type.clone(),
        recording.machine_id.clone(),
        recording.attribute.clone(),
        recording.label,
    )
}

/// Splits indices of `clips` into (kept, held out): `fraction` of each stratum, rounded, is held
/// out, but a stratum of one file stays whole on the kept side.
pub fn split(clips: &[&Clip], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut strata: BTreeMap<_, Vec<(String, usize)>> = BTreeMap::new();
    for (index, clip) in clips.iter().enumerate() {
        let order = hex::encode(Sha256::digest(format!("{seed}:{}", clip.content_sha256)));
        strata
            .entry(stratum(&clip.recording))
            .or_default()
            .push((order, index));
    }
    let (mut kept, mut held) = (Vec::new(), Vec::new());
    for members in strata.values_mut() {
        members.sort();
        let take = if members.len() < 2 {
            0
        } else {
            ((members.len() as f64 * fraction).round() as usize)
                .clamp(usize::from(fraction > 0.0), members.len() - 1)
        };
        for (position, (_, index)) in members.iter().enumerate() {
            if position < take {
                held.push(*index);
            } else {
                kept.push(*index);
            }
        }
    }
    kept.sort_unstable();
    held.sort_unstable();
    (kept, held)
}

/// A fingerprint of a set of recordings: SHA-256 over their sorted content hashes.
pub fn fingerprint<'a>(hashes: impl IntoIterator<Item = &'a str>) -> String {
    let mut sorted: Vec<&str> = hashes.into_iter().collect();
    sorted.sort_unstable();
    let mut digest = Sha256::new();
    for hash in sorted {
        digest.update(hash.as_bytes());
        digest.update(b"\n");
    }
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(id: usize, attribute: &str, label: Label) -> Clip {
        Clip {
            recording: Recording {
                path: PathBuf::from(format!("{id}.wav")),
                machine_type: "valve".into(),
                machine_id: "s00".into(),
                domain: String::new(),
                attribute: attribute.into(),
                label,
            },
            content_sha256: format!("{id:064x}"),
            samples: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn splits_are_stratified_reproducible_and_file_level() {
        let clips: Vec<Clip> = (0..40)
            .map(|i| {
                let attribute = if i % 2 == 0 { "pat_00" } else { "pat_02" };
                let label = if i % 4 < 2 {
                    Label::Normal
                } else {
                    Label::Anomaly
                };
                clip(i, attribute, label)
            })
            .collect();
        let refs: Vec<&Clip> = clips.iter().collect();
        let (kept, held) = split(&refs, 0.2, 7);
        assert_eq!(kept.len() + held.len(), 40);
        assert_eq!(held.len(), 8, "two of each of the four strata of ten");
        for index in &held {
            assert!(!kept.contains(index));
        }
        assert_eq!(split(&refs, 0.2, 7), (kept.clone(), held.clone()));
        assert_ne!(split(&refs, 0.2, 8).1, held, "another seed, another split");

        // Renaming files changes nothing: only content counts.
        let renamed: Vec<Clip> = clips
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.recording.path = PathBuf::from(format!("renamed-{}", c.recording.path.display()));
                c
            })
            .collect();
        let renamed_refs: Vec<&Clip> = renamed.iter().collect();
        assert_eq!(split(&renamed_refs, 0.2, 7).1, held);
    }

    #[test]
    fn a_single_file_stratum_stays_on_the_training_side() {
        let clips = [clip(1, "a", Label::Normal), clip(2, "b", Label::Anomaly)];
        let refs: Vec<&Clip> = clips.iter().collect();
        assert_eq!(split(&refs, 0.5, 1), (vec![0, 1], vec![]));
    }
}
