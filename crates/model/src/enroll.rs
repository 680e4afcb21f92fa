//! Onboarding machines: fitting profiles for machines from a few minutes of their normal sound.
//!
//! A machine of a type the network was trained on gets an embedding profile (the network already
//! knows what matters in such a machine's sound); a machine of a new type gets the per-band
//! Gaussian, the classic detector that needs nothing but a handful of normal clips. Either way the
//! thresholds come from cross-fitted scores of the enrolled clips, and a machine already known is
//! refitted on the recordings its profile kept together with the new ones.

use std::collections::{BTreeMap, BTreeSet};

use crate::ModelError;
use crate::dataset::{Clip, MachineKey};
use crate::detector::Detector;
use crate::profile::{self, ANY, DetectorKind, MachineProfile, NormalWindows, Scope};

/// Whether enrolling adds to what a machine's profile already knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enrolment {
    /// Refit on the recordings the profile keeps and the new ones together: a new operating
    /// pattern joins those the machine already had, and its threshold covers them all.
    #[default]
    Add,
    /// Refit on the new recordings alone, forgetting the earlier ones: a machine rebuilt, a
    /// microphone changed or moved.
    Replace,
}

/// What enrolling did for one machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Enrolled {
    pub machine: MachineKey,
    pub scope: Scope,
    pub detector: DetectorKind,
    /// New normal recordings.
    pub clips: usize,
    /// Recordings the earlier profile kept, refitted together with the new ones.
    pub earlier_clips: usize,
    /// An earlier profile of this machine was replaced rather than added to: asked for, or it
    /// kept none of its recordings (a model file from before profiles kept them).
    pub replaced: bool,
    pub windows: usize,
    pub window_threshold: f64,
    pub clip_threshold: f64,
}

/// Fits profiles for every machine among the normal `clips` (anomalous ones are ignored) and
/// stores them in the detector. With [`Enrolment::Add`], a machine whose profile keeps the
/// recordings it was fitted from is refitted on those and the new ones together; otherwise its
/// profile is replaced. A machine type's profile is refitted on every clip its machines' profiles
/// keep (a new machine of a known type widens it), or fitted from the new clips when the type has
/// none; it is left as it is when one of its machines keeps nothing or was just replaced.
pub fn enroll(
    detector: &mut Detector,
    clips: &[Clip],
    percentile: f64,
    enrolment: Enrolment,
) -> Result<Vec<Enrolled>, ModelError> {
    let known_types: BTreeSet<String> = detector
        .info
        .classes
        .iter()
        .map(|c| c.machine_type.clone())
        .collect();
    // A machine of a type the network was trained on gets an embedding profile (the network
    // already knows what matters in its sound); a new type gets the per-band Gaussian.
    let kind = |machine_type: &str| {
        if known_types.contains(machine_type) {
            DetectorKind::Neighbours
        } else {
            DetectorKind::Bands
        }
    };
    let mut by_machine: BTreeMap<MachineKey, NormalWindows> = BTreeMap::new();
    for clip in clips.iter().filter(|c| !c.is_anomaly()) {
        let inference = detector.hear(&clip.samples);
        if inference.windows == 0 {
            continue;
        }
        by_machine
            .entry(clip.machine())
            .or_default()
            .push_clip(&inference);
    }
    if by_machine.is_empty() {
        return Err(ModelError::Training(
            "no normal recordings to enroll".into(),
        ));
    }
    let dim = detector.info.network.embedding_size();
    let relative_level = detector.info.relative_level;
    let mut report = Vec::new();
    // Machines first: what their profiles keep is what their types' profiles are refitted on.
    for (machine, new) in &by_machine {
        let existing = detector
            .info
            .profiles
            .iter()
            .find(|p| p.scope == Scope::Machine && p.key() == *machine);
        let earlier = match enrolment {
            Enrolment::Add => existing
                .and_then(|p| p.kept.as_ref())
                .map(NormalWindows::from_kept),
            Enrolment::Replace => None,
        };
        let replaced = existing.is_some() && earlier.is_none();
        let earlier_clips = earlier.as_ref().map_or(0, NormalWindows::clips);
        let mut normal = earlier.unwrap_or_default();
        normal.extend(new);
        let profile = profile::enroll_profile(
            Scope::Machine,
            machine,
            kind(&machine.machine_type),
            &normal,
            dim,
            relative_level,
            percentile,
        )?;
        report.push(enrolled(&profile, new.clips(), earlier_clips, replaced));
        store(detector, profile);
    }
    let types: BTreeSet<&str> = by_machine.keys().map(|m| m.machine_type.as_str()).collect();
    for machine_type in types {
        let has_type_profile = detector
            .info
            .profiles
            .iter()
            .any(|p| p.machine_type == machine_type && p.machine_id == ANY);
        let machines: Vec<&MachineProfile> = detector
            .info
            .profiles
            .iter()
            .filter(|p| p.scope == Scope::Machine && p.machine_type == machine_type)
            .collect();
        let all_kept = machines.iter().all(|p| p.kept.is_some());
        let new_clips: usize = by_machine
            .iter()
            .filter(|(m, _)| m.machine_type == machine_type)
            .map(|(_, n)| n.clips())
            .sum();
        // A machine that lost its earlier recordings must not take them from its type's profile too.
        let replaced = report
            .iter()
            .any(|e| e.replaced && e.machine.machine_type == machine_type);
        if has_type_profile && (replaced || !all_kept) {
            continue;
        }
        let mut pooled = NormalWindows::default();
        if all_kept {
            for kept in machines.iter().filter_map(|p| p.kept.as_ref()) {
                pooled.extend(&NormalWindows::from_kept(kept));
            }
        } else {
            for (_, normal) in by_machine
                .iter()
                .filter(|(m, _)| m.machine_type == machine_type)
            {
                pooled.extend(normal);
            }
        }
        let key = MachineKey {
            machine_type: machine_type.to_owned(),
            machine_id: ANY.into(),
        };
        let profile = profile::enroll_profile(
            Scope::MachineType,
            &key,
            kind(machine_type),
            &pooled,
            dim,
            relative_level,
            percentile,
        )?;
        let earlier_clips = pooled.clips().saturating_sub(new_clips);
        report.push(enrolled(&profile, new_clips, earlier_clips, false));
        store(detector, profile);
    }
    Ok(report)
}

fn enrolled(
    profile: &MachineProfile,
    clips: usize,
    earlier_clips: usize,
    replaced: bool,
) -> Enrolled {
    Enrolled {
        machine: profile.key(),
        scope: profile.scope,
        detector: profile.detector,
        clips,
        earlier_clips,
        replaced,
        windows: profile.normal_windows,
        window_threshold: profile.window_threshold,
        clip_threshold: profile.clip_threshold,
    }
}

/// Puts `profile` in the detector in place of any earlier one for the same machine.
fn store(detector: &mut Detector, profile: MachineProfile) {
    detector.info.profiles.retain(|p| {
        !(p.machine_type == profile.machine_type && p.machine_id == profile.machine_id)
    });
    detector.info.profiles.push(profile);
}
