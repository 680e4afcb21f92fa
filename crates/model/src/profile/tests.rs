use super::*;
use crate::calibrate;
use crate::kept::MAX_KEPT_WINDOWS;

/// Six clips of a machine whose clicks vary in sharpness, as the network and the waveform
/// measure would see them.
fn normal_clips() -> NormalWindows {
    let mut normal = NormalWindows::default();
    for clip in 0..6_u16 {
        normal.push_clip(&heard_clip(clip, &sloped_spectrum(clip)), "");
    }
    normal
}

/// Clip number `clip`'s band means: a slope, and a ripple that differs a little from clip to
/// clip, so that the spectrum's contour has a spread to fit.
fn sloped_spectrum(clip: u16) -> Vec<f32> {
    let wobble = f32::from(clip) * 0.1;
    (0..BANDS)
        .map(|band| {
            let ripple = 0.5 * (band as f32 * 0.7 + f32::from(clip) * 0.4).sin();
            -40.0 - band as f32 * 0.3 + wobble + ripple
        })
        .collect()
}

/// Clip number `clip` of a machine as the detector hears it: three windows whose band means
/// are `spectrum`, an embedding and clicks that vary a little with the clip's number.
fn heard_clip(clip: u16, spectrum: &[f32]) -> crate::inference::Inference {
    let wobble = f32::from(clip) * 0.1;
    let embeddings: Vec<f32> = (0..3 * 4)
        .map(|i| ((i % 4) as f32 + 1.0) * (1.0 + wobble) + (i / 4) as f32 * 0.05)
        .collect();
    let band_means: Vec<f32> = (0..3).flat_map(|_| spectrum.iter().copied()).collect();
    let band_peaks: Vec<f32> = band_means.iter().map(|m| m + 6.0 + wobble).collect();
    crate::inference::Inference {
        windows: 3,
        probabilities: Vec::new(),
        embeddings,
        band_means,
        band_peaks,
        waveform: clicking(0.3 + 0.1 * f32::from(clip)),
    }
}

/// Two seconds of a 120 Hz hum with a click of `click` every half second.
fn clicking(click: f32) -> Waveform {
    let samples: Vec<f32> = (0..32_000)
        .map(|i| {
            let hum = 0.05 * (std::f32::consts::TAU * 120.0 * i as f32 / 16_000.0).sin();
            if i % 8_000 < 20 { hum + click } else { hum }
        })
        .collect();
    Waveform::measure(&samples)
}

/// A machine of `machine_type` enrolled from `normal` with a 1 % false-alarm target.
fn enrolled(machine_type: &str, normal: &NormalWindows) -> (MachineKey, MachineProfile) {
    let key = MachineKey {
        machine_type: machine_type.into(),
        machine_id: "m-1".into(),
    };
    let profile = enroll_profile(
        Scope::Machine,
        &key,
        DetectorKind::Neighbours,
        normal,
        4,
        true,
        99.0,
    )
    .expect("enrolled");
    (key, profile)
}

/// A fan's statistics fitted from `normal_clips`, before any held-out clip has set its ranges.
fn fan_statistics() -> MachineProfile {
    let key = MachineKey {
        machine_type: "fan".into(),
        machine_id: "f-1".into(),
    };
    fit_statistics(
        Scope::Machine,
        &key,
        DetectorKind::Neighbours,
        ProfileSource::Enrolled,
        &normal_clips(),
        4,
        true,
    )
    .expect("fit")
}

#[test]
fn a_contour_keeps_tones_and_drops_the_envelope() {
    let contour = SpectrumForm::Contour { half_width: 4 };
    // A tilted envelope, edges included, is all envelope.
    let mut tilt: Vec<f32> = (0..BANDS).map(|band| -30.0 - 0.5 * band as f32).collect();
    contour.apply(&mut tilt);
    assert!(tilt.iter().all(|v| v.abs() < 1e-3), "{tilt:?}");
    // A 9 dB tone on it stands 8 dB above the line through its nine bands; its neighbours
    // sit a little below theirs.
    let mut toned: Vec<f32> = (0..BANDS).map(|band| -30.0 - 0.5 * band as f32).collect();
    toned[30] += 9.0;
    contour.apply(&mut toned);
    assert!((toned[30] - 8.0).abs() < 1e-3, "{}", toned[30]);
    assert!(toned[29] < 0.0 && toned[31] < 0.0 && toned[40].abs() < 1e-3);
    // By level, nothing moves.
    let mut level = vec![-30.0_f32; BANDS];
    level[30] += 9.0;
    let before = level.clone();
    SpectrumForm::Level.apply(&mut level);
    assert_eq!(level, before);
}

#[test]
fn a_healthy_clip_with_a_new_envelope_is_in_range_and_a_moved_tone_is_not() {
    // A fan's spectrum: a hum at band 20 on a falling slope, bands wobbling by a few tenths
    // of a dB from clip to clip, and broadband noise from the hall over the top bands that
    // varies between 0 and 3 dB among the healthy clips.
    let spectrum = |clip: u16, hall_db: f32, hum_band: usize| -> Vec<f32> {
        (0..BANDS)
            .map(|band| {
                let hum = if band == hum_band { 8.0 } else { 0.0 };
                let hall = hall_db * (-((band as f32 - 52.0) / 10.0).powi(2)).exp();
                let wobble = 0.3 * ((f32::from(clip) * 7.3 + band as f32 * 1.7).sin());
                -40.0 - 0.3 * band as f32 + hum + hall + wobble
            })
            .collect()
    };
    let mut normal = NormalWindows::default();
    for clip in 0..8_u16 {
        normal.push_clip(
            &heard_clip(clip, &spectrum(clip, f32::from(clip) * 0.4, 20)),
            "",
        );
    }
    let (_, profile) = enrolled("fan", &normal);
    assert_eq!(
        profile.spectrum,
        SpectrumForm::Contour {
            half_width: CONTOUR_HALF_WIDTH
        }
    );
    let spectrum_part = |clip: &crate::inference::Inference| {
        profile.clip_parts(
            &[],
            &profile.clip_features(&clip.band_means, &clip.band_peaks),
            &clip.waveform,
        )[1]
        .expect("spectrum part")
    };
    // The hall 10 dB louder over the top bands, more than any healthy clip had: in range.
    let noisy_hall = heard_clip(3, &spectrum(11, 10.0, 20));
    assert!(
        spectrum_part(&noisy_hall) < 1.0,
        "{}",
        spectrum_part(&noisy_hall)
    );
    // The hum moved by two bands, the hall as quiet as ever: out of range.
    let moved_hum = heard_clip(3, &spectrum(11, 1.0, 22));
    assert!(
        spectrum_part(&moved_hum) > 1.0,
        "{}",
        spectrum_part(&moved_hum)
    );
}

#[test]
fn a_knock_among_healthy_clips_does_not_widen_the_range_towards_a_duller_sound() {
    let fitted = fan_statistics();
    assert!(
        fitted.impulsiveness.is_some(),
        "the clips measure impulsiveness"
    );
    // Six healthy clips as statistics fitted without each saw them (Σz² duller, sharper): a little
    // either way, and one that caught a knock from the hall, far towards sharper.
    let healthy = [
        (2.0, 0.5),
        (0.4, 3.0),
        (3.0, 0.2),
        (0.3, 2.0),
        (2.5, 0.6),
        (0.0, 400.0),
    ];
    let held_out = |sided: bool| -> Vec<HeldOutClip> {
        healthy
            .iter()
            .map(|&(duller, sharper)| HeldOutClip {
                anomaly: false,
                window_scores: vec![0.02; 3],
                raw_parts: [Some(0.02), Some(50.0), Some(50.0), Some(duller + sharper)],
                impulsiveness_by_side: sided.then_some((duller, sharper)),
            })
            .collect()
    };
    let mut by_side = fitted.clone();
    calibrate_profile(&mut by_side, &held_out(true), 99.0).expect("calibrated by side");
    let mut one_range = fitted;
    calibrate_profile(&mut one_range, &held_out(false), 99.0).expect("calibrated");
    let sides = by_side.impulsiveness_sides.expect("a range on each side");
    assert!(one_range.impulsiveness_sides.is_none());
    assert!(
        sides.sharper > 20.0 * sides.duller,
        "the knock widens the sharper side only: {sides:?}"
    );
    // A steadier sound than any healthy clip's (a fan's roar, a valve's duller click): out of
    // range by side, lost in the knock's range with one.
    let dull = |profile: &MachineProfile, duller: f64, sharper: f64| {
        let impulsiveness = profile.impulsiveness_part(duller, sharper);
        profile.weigh(profile.scale([Some(0.02), Some(50.0), Some(50.0), Some(impulsiveness)]))
    };
    assert!(
        dull(&by_side, 30.0, 0.0) > 1.0,
        "{}",
        dull(&by_side, 30.0, 0.0)
    );
    assert!(
        dull(&one_range, 30.0, 0.0) < 1.0,
        "{}",
        dull(&one_range, 30.0, 0.0)
    );
    // Another knock like the healthy one's stays in range either way.
    assert!(
        dull(&by_side, 0.0, 380.0) < 1.0,
        "{}",
        dull(&by_side, 0.0, 380.0)
    );
}

#[test]
fn a_part_that_varies_among_healthy_clips_does_not_drown_a_steady_one() {
    let mut profile = fan_statistics();
    // Five healthy clips as their own statistics never saw them: a steady band spectrum, and
    // band peaks that a knock in the hall took far out in one of them.
    let healthy = [
        (0.020, 60.0, 50.0, 4.0),
        (0.030, 45.0, 45.0, 6.0),
        (0.025, 70.0, 60.0, 5.0),
        (0.018, 52.0, 55.0, 3.0),
        (0.022, 64.0, 900.0, 5.5),
    ];
    let held_out: Vec<HeldOutClip> = healthy
        .iter()
        .map(|&(windows, spectrum, peaks, impulsiveness)| HeldOutClip {
            anomaly: false,
            window_scores: vec![windows; 3],
            raw_parts: [
                Some(windows),
                Some(spectrum),
                Some(peaks),
                Some(impulsiveness),
            ],
            impulsiveness_by_side: None,
        })
        .collect();
    calibrate_profile(&mut profile, &held_out, 99.0).expect("calibrated");
    let parts = |spectrum: f64, peaks: f64| [Some(0.022), Some(spectrum), Some(peaks), Some(4.5)];
    let score = |spectrum: f64, peaks: f64| profile.weigh(profile.scale(parts(spectrum, peaks)));
    // A hum that moved: the spectrum far beyond any healthy clip's, the peaks ordinary.
    assert!(score(400.0, 60.0) > 1.0, "fault {}", score(400.0, 60.0));
    // Another knock like the healthy one's, and a plain healthy clip: both in range.
    assert!(score(55.0, 900.0) < 1.0, "knock {}", score(55.0, 900.0));
    assert!(score(58.0, 52.0) < 1.0, "healthy {}", score(58.0, 52.0));
    // Added up, the same parts would put the knock over the threshold.
    let mut added = profile.clone();
    added.fusion = Fusion::Sum;
    let knock_added = added.weigh(added.scale(parts(55.0, 900.0)));
    assert!(knock_added > 1.0, "knock added up {knock_added}");
}

#[test]
fn a_profile_keeps_its_latest_clips_up_to_the_limit_and_refuses_damaged_ones() {
    // Clips of ten windows: the limit keeps the latest whole clips that fit in it.
    let clips = MAX_KEPT_WINDOWS / 10 + 5;
    let mut normal = NormalWindows::default();
    for clip in 0..clips {
        normal.embeddings.push(vec![clip as f32; 10 * 2]);
        normal.band_means.push(vec![-40.0; 10 * BANDS]);
        normal.band_peaks.push(vec![-30.0; 10 * BANDS]);
        normal.waveforms.push(Waveform::default());
        normal.sources.push(format!("{clip:064x}"));
    }
    let kept = normal.keep();
    assert_eq!(kept.len(), MAX_KEPT_WINDOWS / 10);
    assert_eq!(
        kept.clips[0].embeddings[0], 5.0,
        "the oldest five are dropped"
    );
    assert_eq!(kept.clips[0].content_sha256, format!("{:064x}", 5));
    let back = NormalWindows::from_kept(&kept, 2).expect("whole windows");
    assert_eq!(back.clips(), MAX_KEPT_WINDOWS / 10);
    assert_eq!(back.sources[0], format!("{:064x}", 5));
    assert!(
        NormalWindows::from_kept(&kept, 3).is_err(),
        "embeddings of another size do not make whole windows"
    );
    let mut damaged = kept.clone();
    damaged.clips[3].band_means.pop();
    let error = NormalWindows::from_kept(&damaged, 2).expect_err("damaged");
    assert!(
        error.to_string().contains("kept recording 3 is damaged"),
        "{error}"
    );
}

#[test]
fn enrolling_scales_every_part_by_clips_its_statistics_never_contained() {
    let normal = normal_clips();
    let (key, profile) = enrolled("valve", &normal);
    // Each clip scored by the statistics fitted without it.
    let (mut spectrum, mut peaks, mut impulsiveness) = (Vec::new(), Vec::new(), Vec::new());
    for left_out in 0..normal.clips() {
        let partial = fit_statistics(
            Scope::Machine,
            &key,
            DetectorKind::Neighbours,
            ProfileSource::Enrolled,
            &normal.without(left_out),
            4,
            true,
        )
        .expect("partial");
        let input = normal.clip(left_out);
        let ([_, s, p, i], by_side) = partial.raw_parts_by_side(
            &[],
            &partial.clip_features(input.band_means, input.band_peaks),
            &input.waveform,
        );
        spectrum.push(s.expect("spectrum part"));
        peaks.push(p.expect("band peaks part"));
        let (duller, sharper) = by_side.expect("impulsiveness by side");
        // Without ranges of its own, the part is the departure, on whichever side it lies.
        assert_eq!(i, Some(duller + sharper), "impulsiveness part");
        impulsiveness.push((duller, sharper));
    }
    // Five ranges — three parts and the impulsiveness's two sides — share the 1 % of healthy
    // clips a threshold may flag.
    let range = |values: &[f64]| {
        calibrate::gamma_threshold(values, 99.8)
            .expect("gamma fit")
            .0
    };
    let side =
        |pick: fn(&(f64, f64)) -> f64| -> Vec<f64> { impulsiveness.iter().map(pick).collect() };
    assert_eq!(profile.fusion, Fusion::Furthest);
    assert!((profile.clip_bands_scale - range(&spectrum)).abs() < 1e-9);
    assert_eq!(profile.band_peaks_scale, Some(range(&peaks)));
    let sides = profile.impulsiveness_sides.expect("a range on each side");
    assert!((sides.duller - range(&side(|s| s.0))).abs() < 1e-9);
    assert!((sides.sharper - range(&side(|s| s.1))).abs() < 1e-9);
    assert_eq!(
        profile.impulsiveness_scale, 1.0,
        "in units of its sides' ranges"
    );
    assert_eq!(profile.clip_threshold, 1.0, "out of range is beyond 1");
    // In-sample, the same clips would have looked tamer: the held-out range is the honest one.
    let in_sample: Vec<f64> = (0..normal.clips())
        .filter_map(|c| profile.impulsiveness_by_side(&normal.clip(c).waveform))
        .map(|(duller, sharper)| duller + sharper)
        .collect();
    assert!(range(&in_sample) < range(&side(|s| s.0 + s.1)));
    // Judged against its own range, a part that departs is heard however much another part
    // varies among healthy clips.
    let parts = |spectrum: f64, peaks: f64| {
        [
            Some(0.0),
            Some(spectrum * profile.clip_bands_scale),
            Some(peaks * profile.band_peaks_scale.unwrap_or(1.0)),
            Some(0.0),
        ]
    };
    assert!(profile.weigh(profile.scale(parts(1.5, 0.1))) > profile.clip_threshold);
    assert!(profile.weigh(profile.scale(parts(0.9, 0.9))) < profile.clip_threshold);
}

#[test]
fn a_type_profile_judges_other_machines_only_once_fitted_from_several() {
    let (_, machine) = enrolled("pump", &normal_clips());
    assert!(
        machine
            .impulsiveness
            .iter()
            .flatten()
            .all(|scale| scale.below.is_some() && scale.above.is_some()),
        "impulse scales with a range on each side"
    );
    let mut of_type = machine.clone();
    of_type.scope = Scope::MachineType;
    of_type.machine_id = ANY.into();
    of_type.machines = vec!["id_01".into()];
    assert!(
        of_type.judges_machine("id_01"),
        "a machine it was fitted from, too short of clips for a profile of its own"
    );
    assert!(
        !of_type.judges_machine("id_02"),
        "one pump's normal is not another's"
    );
    of_type.machines.push("id_03".into());
    assert!(of_type.judges_machine("id_02"));
    of_type.machines.clear();
    assert!(
        !of_type.judges_machine("id_01"),
        "a profile that does not say what it was fitted from judges no other machine"
    );
    let mut own = machine;
    own.machines = vec!["id_01".into(), "id_03".into()];
    assert!(
        !own.judges_machine("id_02"),
        "a machine's own profile is never another's"
    );
}

#[test]
fn a_clip_out_of_the_impulsiveness_range_says_which_way() {
    let (_, profile) = enrolled("valve", &normal_clips());
    let side = |click: f32| {
        let clip = heard_clip(2, &sloped_spectrum(2));
        let waveform = clicking(click);
        let (_, parts) = profile.clip_score_parts(
            &[],
            &profile.clip_features(&clip.band_means, &clip.band_peaks),
            &waveform,
        );
        (parts.impulsiveness, parts.impulsiveness_side)
    };
    // Healthy clicks are 0.3 to 0.8 above a 0.05 hum: a click of 0.05 has gone dull, one of 3
    // is a knock.
    let (dull, dull_side) = side(0.05);
    assert!(dull.is_some_and(|p| p > 1.0), "{dull:?}");
    assert_eq!(dull_side, Some(Side::Duller));
    let (knock, knock_side) = side(3.0);
    assert!(knock.is_some_and(|p| p > 1.0), "{knock:?}");
    assert_eq!(knock_side, Some(Side::Sharper));
    // A profile that judges no impulsiveness says no side.
    let mut without = profile.clone();
    without.impulsiveness = None;
    let clip = heard_clip(2, &sloped_spectrum(2));
    let (_, parts) = without.clip_score_parts(
        &[],
        &without.clip_features(&clip.band_means, &clip.band_peaks),
        &clicking(0.05),
    );
    assert_eq!(parts.impulsiveness_side, None);
}

#[test]
fn each_side_is_named_alike_by_its_text_and_its_serialised_form() {
    for side in Side::ALL {
        let serialised = serde_json::to_value(side).expect("a side serialises");
        assert_eq!(serialised, side.as_str());
    }
}

/// Whether a calibrated profile's verdict flags a held-out clip: its impulsiveness judged by
/// the profile's sides, its parts scaled, weighed and set against the clip threshold.
fn flags(profile: &MachineProfile, clip: &HeldOutClip) -> bool {
    let mut parts = clip.raw_parts;
    let (duller, sharper) = clip.impulsiveness_by_side.expect("sides");
    parts[3] = Some(profile.impulsiveness_part(duller, sharper));
    profile.weigh(profile.scale(parts)) > profile.clip_threshold
}

#[test]
fn the_false_alarm_check_judges_each_healthy_clip_by_ranges_fitted_without_it() {
    // Thirty healthy clips as statistics fitted without each saw them, spread a little in every
    // part, and two that caught a knock from the hall, far towards sharper: each within the range
    // the other sets, beyond the range the rest set.
    let knocks = [17, 23];
    let clip = |i: usize, anomaly: bool| {
        let wobble = ((i * 7919) % 13) as f64 / 13.0;
        let (duller, sharper) = if knocks.contains(&i) {
            (0.0, 300.0)
        } else if i.is_multiple_of(2) {
            (1.0 + 2.0 * wobble, 0.0)
        } else {
            (0.0, 1.0 + 3.0 * wobble)
        };
        HeldOutClip {
            anomaly,
            window_scores: vec![0.02 + 0.01 * wobble; 3],
            raw_parts: [
                Some(0.02 + 0.01 * wobble),
                Some(50.0 + 20.0 * wobble),
                Some(40.0 + 30.0 * (1.0 - wobble)),
                Some(duller + sharper),
            ],
            impulsiveness_by_side: Some((duller, sharper)),
        }
    };
    let healthy: Vec<HeldOutClip> = (0..30).map(|i| clip(i, false)).collect();
    let mut profile = fan_statistics();
    calibrate_profile(&mut profile, &healthy, 99.0).expect("calibrated");
    let check = profile.false_alarm_check.expect("a check");
    assert_eq!(check.clips, 30);

    // The same, worked out through the public path: each clip judged by a profile calibrated on
    // the other 29.
    let flagged: Vec<usize> = (0..healthy.len())
        .filter(|&left_out| {
            let others: Vec<HeldOutClip> = healthy
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != left_out)
                .map(|(_, c)| c.clone())
                .collect();
            let mut without = fan_statistics();
            calibrate_profile(&mut without, &others, 99.0).expect("calibrated without it");
            flags(&without, &healthy[left_out])
        })
        .collect();
    assert!(
        knocks.iter().all(|k| flagged.contains(k)),
        "each knock is beyond what the other 29 reach: {flagged:?}"
    );
    assert_eq!(check.flagged, flagged.len(), "{flagged:?}");
    assert!((check.rate() - flagged.len() as f64 / 30.0).abs() < 1e-12);
    // Judged by the ranges fitted with them, the knocks are inside: a check that let each clip
    // help fit the range it is judged by would count fewer than the check does.
    let in_own_ranges = healthy.iter().filter(|c| flags(&profile, c)).count();
    assert!(
        in_own_ranges < check.flagged,
        "{in_own_ranges} flagged by the ranges fitted with them, {} by the check",
        check.flagged
    );

    // A threshold set by fault labels targets no rate, and carries no check.
    let mut labelled = fan_statistics();
    let mut with_faults = healthy.clone();
    with_faults.extend((0..5).map(|i| {
        let mut fault = clip(i, true);
        fault.impulsiveness_by_side = Some((40.0, 0.0));
        fault.raw_parts[3] = Some(40.0);
        fault
    }));
    calibrate_profile(&mut labelled, &with_faults, 99.0).expect("calibrated with faults");
    assert_eq!(labelled.false_alarm_check, None);
}
