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
use crate::stats::FitError;

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
    /// Recordings given that the profile already held: counted once, not twice.
    pub already_known: usize,
    /// An earlier profile of this machine was replaced rather than added to: asked for, or it
    /// kept none of its recordings (a model file from before profiles kept them).
    pub replaced: bool,
    /// For a machine type's profile, the machines (their ids) it was fitted from.
    pub machines: Vec<String>,
    /// For a machine type's profile, whether it judges any machine of its type without a profile
    /// of its own ([`MachineProfile::judges_any_machine`]).
    pub judges_any_machine: bool,
    pub windows: usize,
    pub window_threshold: f64,
    pub clip_threshold: f64,
    /// The enrolled clips each judged by ranges fitted without it
    /// ([`MachineProfile::false_alarm_check`]).
    #[serde(default)]
    pub false_alarm_check: Option<profile::FalseAlarmCheck>,
}

/// Fits profiles for every machine among the normal `clips` (anomalous ones are ignored) and
/// stores them in the detector. With [`Enrolment::Add`], a machine whose profile keeps the
/// recordings it was fitted from is refitted on those and the new ones together; otherwise its
/// profile is replaced; recordings it already holds count once. A machine type's profile is
/// refitted on every clip its machines' profiles keep (a new machine of a known type widens it)
/// while they hold every clip it was fitted from, and fitted from them, or from the new clips,
/// when the type has none.
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
    let dim = detector.info.network.embedding_size();
    let relative_level = detector.info.relative_level;
    let mut by_machine: BTreeMap<MachineKey, NormalWindows> = BTreeMap::new();
    for clip in clips.iter().filter(|c| !c.is_anomaly()) {
        let inference = detector.hear(&clip.samples);
        if inference.windows == 0 {
            continue;
        }
        by_machine
            .entry(clip.machine())
            .or_default()
            .push_clip(&inference, &clip.content_sha256);
    }
    if by_machine.is_empty() {
        return Err(ModelError::Training(
            "no normal recordings to enroll".into(),
        ));
    }
    let mut report = Vec::new();
    let mut new_by_type: BTreeMap<String, NormalWindows> = BTreeMap::new();
    let mut new_machines: BTreeSet<MachineKey> = BTreeSet::new();
    // Machines first: what their profiles keep is what their types' profiles are refitted on.
    for (machine, given) in &by_machine {
        let existing = detector
            .info
            .profiles
            .iter()
            .find(|p| p.scope == Scope::Machine && p.key() == *machine);
        let earlier = match (enrolment, existing.and_then(|p| p.kept.as_ref())) {
            (Enrolment::Add, Some(kept)) => Some(
                NormalWindows::from_kept(kept, dim)
                    .map_err(|e| FitError(format!("{machine}: {}", e.0)))?,
            ),
            _ => None,
        };
        let replaced = existing.is_some() && earlier.is_none();
        // A recording the profile already holds is not counted twice: that would put an exact twin
        // of each left-out clip into the statistics it is scored against.
        let new = earlier
            .as_ref()
            .map_or_else(|| given.clone(), |e| given.not_in(e));
        let already_known = given.clips() - new.clips();
        let earlier_clips = earlier.as_ref().map_or(0, NormalWindows::clips);
        if new.clips() == 0 {
            if let Some(profile) = existing {
                report.push(enrolled(profile, 0, earlier_clips, already_known, false));
            }
            continue;
        }
        let mut normal = earlier.unwrap_or_default();
        normal.extend(&new);
        let profile = profile::enroll_profile(
            Scope::Machine,
            machine,
            kind(&machine.machine_type),
            &normal,
            dim,
            relative_level,
            percentile,
        )?;
        report.push(enrolled(
            &profile,
            new.clips(),
            earlier_clips,
            already_known,
            replaced,
        ));
        store(detector, profile);
        let of_type = new_by_type.entry(machine.machine_type.clone()).or_default();
        let fresh = new.not_in(of_type);
        if fresh.clips() > 0 {
            new_machines.insert(machine.clone());
            of_type.extend(&fresh);
        }
    }
    for (machine_type, new) in &new_by_type {
        let type_profile = detector
            .info
            .profiles
            .iter()
            .find(|p| p.machine_type == *machine_type && p.machine_id == ANY);
        let own_profiles: Vec<&MachineProfile> = detector
            .info
            .profiles
            .iter()
            .filter(|p| p.scope == Scope::Machine && p.machine_type == *machine_type)
            .collect();
        let all_kept = own_profiles.iter().all(|p| p.kept.is_some());
        // The clips the type's profile is fitted on, and the machines they are of: every clip its
        // machines keep when they all keep theirs, else those enrolled now.
        let (pooled, machines) = match (type_profile, all_kept) {
            (Some(type_profile), true) => {
                let (pooled, machines) = pooled_kept(&own_profiles, dim)?;
                // Refitted only while its machines hold every clip it was fitted from: a machine
                // with no profile of its own, or one just replaced, would otherwise drop out of it.
                let holds: BTreeSet<String> = pooled.known_sources().into_iter().collect();
                if type_profile.fitted_from.is_empty()
                    || !type_profile.fitted_from.iter().all(|h| holds.contains(h))
                {
                    continue;
                }
                (pooled, machines)
            }
            (Some(_), false) => continue,
            (None, true) => pooled_kept(&own_profiles, dim)?,
            (None, false) => (
                new.clone(),
                new_machines
                    .iter()
                    .filter(|m| m.machine_type == *machine_type)
                    .map(|m| m.machine_id.clone())
                    .collect(),
            ),
        };
        let key = MachineKey {
            machine_type: machine_type.clone(),
            machine_id: ANY.into(),
        };
        let mut profile = profile::enroll_profile(
            Scope::MachineType,
            &key,
            kind(machine_type),
            &pooled,
            dim,
            relative_level,
            percentile,
        )?;
        profile.machines = machines.into_iter().collect();
        // New to the type: the recordings given now that it was not fitted from before.
        let given: BTreeSet<String> = new.known_sources().into_iter().collect();
        let before: BTreeSet<&String> = type_profile
            .map(|p| p.fitted_from.iter().collect())
            .unwrap_or_default();
        let fresh = pooled
            .sources
            .iter()
            .filter(|s| given.contains(*s) && !before.contains(s))
            .count();
        report.push(enrolled(&profile, fresh, pooled.clips() - fresh, 0, false));
        store(detector, profile);
    }
    Ok(report)
}

/// Every clip the machines' profiles keep, a recording kept by two of them counted once, and the
/// machines (their ids) that gave at least one clip.
fn pooled_kept(
    machines: &[&MachineProfile],
    dim: usize,
) -> Result<(NormalWindows, BTreeSet<String>), FitError> {
    let mut pooled = NormalWindows::default();
    let mut gave = BTreeSet::new();
    for machine in machines {
        let Some(kept) = &machine.kept else {
            continue;
        };
        let clips = NormalWindows::from_kept(kept, dim)
            .map_err(|e| FitError(format!("{}: {}", machine.key(), e.0)))?
            .not_in(&pooled);
        if clips.clips() > 0 {
            gave.insert(machine.machine_id.clone());
            pooled.extend(&clips);
        }
    }
    Ok((pooled, gave))
}

fn enrolled(
    profile: &MachineProfile,
    clips: usize,
    earlier_clips: usize,
    already_known: usize,
    replaced: bool,
) -> Enrolled {
    Enrolled {
        machine: profile.key(),
        scope: profile.scope,
        detector: profile.detector,
        clips,
        earlier_clips,
        already_known,
        replaced,
        machines: profile.machines.clone(),
        judges_any_machine: profile.judges_any_machine(),
        windows: profile.normal_windows,
        window_threshold: profile.window_threshold,
        clip_threshold: profile.clip_threshold,
        false_alarm_check: profile.false_alarm_check,
    }
}

/// Puts `profile` in the detector in place of any earlier one for the same machine.
fn store(detector: &mut Detector, profile: MachineProfile) {
    detector.info.profiles.retain(|p| {
        !(p.machine_type == profile.machine_type && p.machine_id == profile.machine_id)
    });
    detector.info.profiles.push(profile);
}
