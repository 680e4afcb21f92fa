//! Training, saving, loading, enrolling and judging on real recordings (the samples in
//! `tests/data/recordings`), with a network small enough to train in seconds.

use sha2::Digest;

use auscult_model::features::{IMPULSE_SCALES, PeakStatistic, Waveform};
use auscult_model::profile::{DetectorKind, Fusion, MachineProfile, Scope, SpectrumForm};
use auscult_model::train::{Silent, TrainConfig};
use auscult_model::{Clip, Detector, MachineKey, ModelError, Verdict, dataset, enroll, train};

mod common;
use common::{samples, tiny};

/// `profile` as a file written before `field` existed would hold it: read back without the key.
fn without_key(profile: &MachineProfile, field: &str) -> MachineProfile {
    let mut json = serde_json::to_value(profile).expect("profile as JSON");
    let removed = json
        .as_object_mut()
        .expect("a profile is an object")
        .remove(field);
    assert!(removed.is_some(), "new profiles store `{field}`");
    serde_json::from_value(json).expect("profile without the key")
}

fn key(machine_type: &str, machine_id: &str) -> MachineKey {
    MachineKey {
        machine_type: machine_type.into(),
        machine_id: machine_id.into(),
    }
}

/// A tiny network trained for one epoch on `clips`.
fn trained_once(clips: &[Clip]) -> Detector {
    let config = TrainConfig {
        max_epochs: 1,
        ..tiny()
    };
    train::train(clips, &config, &Silent).expect("train")
}

/// Enrols `clips` and says how many recordings their type's profile was refitted with: new to it,
/// and earlier.
fn type_refit_by(detector: &mut Detector, clips: &[Clip]) -> (usize, usize) {
    let report = enroll::enroll(detector, clips, 90.0, enroll::Enrolment::Add).expect("enrolled");
    let refit = report
        .iter()
        .find(|e| e.scope == Scope::MachineType)
        .expect("the type's profile refitted");
    (refit.clips, refit.earlier_clips)
}

#[test]
fn a_trained_model_survives_the_file_and_records_its_data() {
    let clips = samples();
    let detector = train::train(&clips, &tiny(), &Silent).expect("train");
    let info = &detector.info;
    assert_eq!(
        info.classes.len(),
        3,
        "valve × 2 patterns and fan, from normal sound alone"
    );
    assert!(info.relative_level && !info.training.fault_labels);
    assert!(
        info.training.balanced_classes,
        "the record says the classes were weighted"
    );
    let normal: Vec<&Clip> = clips.iter().filter(|c| !c.is_anomaly()).collect();
    let training = &info.training;
    assert_eq!(
        training.training_files + training.validation_files,
        normal.len(),
        "no fault was heard in training"
    );
    assert_eq!(training.files.len(), normal.len());
    assert_eq!(
        training.data_fingerprint,
        dataset::fingerprint(normal.iter().map(|c| c.content_sha256.as_str()))
    );
    assert!(!training.epochs.is_empty() && training.epochs.len() <= 2);
    for scope in [Scope::Machine, Scope::MachineType] {
        assert!(
            info.profiles.iter().any(|p| p.scope == scope),
            "{scope:?} profile"
        );
    }
    assert!(
        info.profiles.iter().all(|p| p.scope != Scope::Global),
        "no profile judges machines the model does not know"
    );

    // With fault labels, the faults become classes too: a supervised model, recorded as such.
    let supervised = train::train(
        &clips,
        &TrainConfig {
            fault_labels: true,
            max_epochs: 1,
            ..tiny()
        },
        &Silent,
    )
    .expect("train");
    assert_eq!(
        supervised.info.classes.len(),
        6,
        "valve × 2 patterns × 2 conditions, fan × 2 conditions"
    );
    assert!(supervised.info.training.fault_labels);
    assert_eq!(supervised.info.training.files.len(), clips.len());
    // Two validation normals are too few for a range: the valve's profiles were cross-fitted on
    // all its normal clips, so its validation clips are inside them and make no validation figure.
    // A supervised model keeps validation that holds faults, for a threshold set by F1 on them.
    let validated = |detector: &Detector| -> Vec<String> {
        detector
            .info
            .training
            .validation
            .iter()
            .map(|t| t.machine_type.clone())
            .collect()
    };
    assert!(
        !validated(&detector).contains(&"valve".to_owned()),
        "{:?}",
        detector.info.training.validation
    );
    assert!(
        validated(&supervised).contains(&"valve".to_owned()),
        "{:?}",
        supervised.info.training.validation
    );
    for profile in &info.profiles {
        assert!(profile.window_threshold.is_finite() && profile.clip_threshold.is_finite());
        assert!(
            profile.clip_bands.is_some(),
            "clip band profile for {}",
            profile.key()
        );
    }

    // Every profile judges the waveform's impulsiveness at each scale; a profile written before
    // the scales existed judged the crest factor alone, and still does.
    let mut legacy = serde_json::to_value(&info.profiles[0]).expect("profile as JSON");
    let fields = legacy.as_object_mut().expect("a profile is an object");
    let scales = fields
        .remove("impulsiveness")
        .and_then(|v| v.as_array().map(Vec::len));
    assert_eq!(scales, Some(IMPULSE_SCALES.len()));
    fields.remove("impulsiveness_scale");
    fields.insert(
        "crest".into(),
        serde_json::json!({"mean": 20.0, "std": 2.0}),
    );
    fields.insert("crest_scale".into(), serde_json::json!(4.0));
    let legacy: MachineProfile = serde_json::from_value(legacy).expect("legacy profile");
    let waveform = Waveform::measure(&clips[0].samples);
    let crest = waveform.crest_db().expect("crest factor");
    let ([_, _, _, part], side) = legacy.clip_parts_and_side(&[1.0], &vec![0.0; 128], &waveform);
    let expected = ((crest - 20.0) / 2.0).powi(2) / 4.0;
    assert!(
        part.is_some_and(|p| (p - expected).abs() < 1e-9),
        "legacy crest part {part:?}, expected {expected}"
    );
    // One crest factor has no side to depart to: none is claimed.
    assert_eq!(side, None);
    // A profile from before each part had its own range added its parts, the band spectrum and
    // peaks as one, and still does.
    let mut added = serde_json::to_value(&info.profiles[0]).expect("profile as JSON");
    let fields = added.as_object_mut().expect("a profile is an object");
    fields.remove("fusion");
    fields.remove("band_peaks_scale");
    fields.insert("clip_weights".into(), serde_json::json!([1.0, 0.5, 2.0]));
    let added: MachineProfile = serde_json::from_value(added).expect("profile that adds");
    assert_eq!(added.fusion, Fusion::Sum);
    let features = vec![1.0; 128];
    let parts = added.clip_parts(&[3.0], &features, &waveform);
    let [
        Some(windows),
        Some(spectrum),
        Some(peaks),
        Some(impulsiveness),
    ] = parts
    else {
        panic!("every part present: {parts:?}");
    };
    let bands = added
        .clip_bands
        .as_ref()
        .expect("clip bands")
        .score(&features)
        / added.clip_bands_scale;
    assert!((spectrum + peaks - bands).abs() < 1e-9 * bands.max(1.0));
    let score = added.clip_score(&[3.0], &features, &waveform);
    let sum = windows + 0.5 * (spectrum + peaks) + 2.0 * impulsiveness;
    assert!(
        (score - sum).abs() < 1e-9 * sum.max(1.0),
        "{score} vs {sum}"
    );
    // Before the waveform's part a profile held two weights; the part without one counts nothing.
    let mut two = added.clone();
    two.clip_weights = vec![1.0, 0.5];
    let score = two.clip_score(&[3.0], &features, &waveform);
    let sum = windows + 0.5 * (spectrum + peaks);
    assert!(
        (score - sum).abs() < 1e-9 * sum.max(1.0),
        "two weights: {score} vs {sum}"
    );

    // A profile from before contours judged the band spectrum by level, and still does; a new one
    // judges each band against the line through its neighbours, so a tilt counts nothing.
    let by_level = without_key(&info.profiles[0], "spectrum");
    assert_eq!(by_level.spectrum, SpectrumForm::Level);
    let tilted: Vec<f32> = (0..64)
        .map(|band| -40.0 - 0.5 * band as f32 + if band == 20 { 6.0 } else { 0.0 })
        .collect();
    let clip_level = tilted.iter().sum::<f32>() / 64.0;
    let level = by_level.clip_features(&tilted, &tilted);
    assert!(
        level[..64]
            .iter()
            .zip(&tilted)
            .all(|(judged, mean)| (judged - (mean - clip_level)).abs() < 1e-4)
    );
    let contour = info.profiles[0].clip_features(&tilted, &tilted);
    assert!(contour[50].abs() < 1e-3 && contour[20] > 5.0, "{contour:?}");
    assert_eq!(
        contour[64..],
        level[64..],
        "the peaks are judged by level either way"
    );

    // A profile from before the upper quartile took a clip's band peaks from its loudest window,
    // and still does; a new one from what a quarter of its windows reach, so one window 30 dB
    // louder than four others moves the old one by 30 dB and the new one not at all.
    let by_loudest = without_key(&info.profiles[0], "peaks");
    assert_eq!(by_loudest.peak_statistic, PeakStatistic::Loudest);
    assert_eq!(
        info.profiles[0].peak_statistic,
        PeakStatistic::UpperQuartile
    );
    let means = vec![-50.0_f32; 5 * 64];
    let mut peaks = vec![-40.0_f32; 5 * 64];
    peaks[3 * 64..4 * 64].fill(-10.0);
    let loudest = by_loudest.clip_features(&means, &peaks);
    let quartile = info.profiles[0].clip_features(&means, &peaks);
    for band in 64..128 {
        assert!(
            (loudest[band] - quartile[band] - 30.0).abs() < 1e-4,
            "band {band}"
        );
        assert!(
            (quartile[band] - 10.0).abs() < 1e-4,
            "10 dB above the clip's level"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.model");
    detector.save(&path).expect("save");
    let loaded = Detector::load(&path).expect("load");
    assert_eq!(loaded.info, detector.info, "metadata round-trips exactly");
    let again = Detector::load(&path).expect("load again");

    let clip = &clips[0];
    let judge = |d: &Detector| {
        d.assess(&d.hear(&clip.samples), Some(&clip.machine()))
            .expect("assess")
    };
    let (before, after, twice) = (judge(&detector), judge(&loaded), judge(&again));
    assert_eq!(after.window_scores.len(), twice.window_scores.len());
    let wobble = (after.anomaly_score - twice.anomaly_score).abs() / after.anomaly_score;
    assert!(wobble < 1e-4, "the same file scores the same ({wobble})");
    assert_eq!(before.window_scores.len(), 19);
    // Large weights are stored in half precision: scores move a little, not a lot.
    let drift = (before.anomaly_score - after.anomaly_score).abs() / before.anomaly_score;
    assert!(drift < 0.05, "score drifted {drift:.4} through the file");
    assert_eq!(before.top_bands.len(), 3);
    assert!(before.top_bands.iter().all(|b| b.low_hz < b.high_hz));

    // Impulse scales have a range on each side of the median.
    assert!(info.profiles.iter().all(|p| {
        p.impulsiveness.as_ref().is_some_and(|scales| {
            scales
                .iter()
                .all(|s| s.below.is_some() && s.above.is_some())
        })
    }));
    // A file from before type profiles listed their machines gets the list when it is read: the
    // machines of the type the network was trained on.
    let mut older = detector.info.clone();
    for profile in &mut older.profiles {
        if profile.scope == Scope::MachineType {
            *profile = without_key(profile, "machines");
            assert!(profile.machines.is_empty());
        }
    }
    let bytes = auscult_model::file::encode(&older, &[]).expect("encode");
    let (read, _) = auscult_model::file::decode(&bytes).expect("decode");
    assert_eq!(
        read.profiles, detector.info.profiles,
        "listed as training listed them"
    );
}

#[test]
fn a_machine_too_short_of_clips_for_its_own_profile_is_judged_by_its_types() {
    // Two of the valve's normal recordings presented as a second valve: too few for a profile of
    // its own, so its type's profile, fitted from both valves, judges it — and any other valve.
    let mut relabelled = 0;
    let clips: Vec<Clip> = samples()
        .into_iter()
        .map(|mut c| {
            if c.recording.machine_type == "valve" && !c.is_anomaly() && relabelled < 2 {
                c.recording.machine_id = "section_01".into();
                relabelled += 1;
            }
            c
        })
        .collect();
    let detector = trained_once(&clips);
    let profiles = &detector.info.profiles;
    assert!(
        !profiles
            .iter()
            .any(|p| p.key() == key("valve", "section_01")),
        "two recordings make no profile of their own"
    );
    let valve_type = profiles
        .iter()
        .find(|p| p.key() == key("valve", "*"))
        .expect("the valve type's profile");
    assert_eq!(valve_type.machines, ["section_00", "section_01"]);
    for machine in [key("valve", "section_01"), key("valve", "section_07")] {
        let judged = detector
            .judging_profile(&machine)
            .unwrap_or_else(|e| panic!("{machine}: {e}"));
        assert_eq!(judged.scope, Scope::MachineType, "{machine}");
    }
    assert_eq!(
        detector
            .judging_profile(&key("valve", "*"))
            .map(|p| p.scope)
            .ok(),
        Some(Scope::MachineType),
        "`*` names no machine of its own"
    );
}

#[test]
fn damaged_model_files_are_refused_with_a_reason() {
    let clips = samples();
    let detector = trained_once(&clips);
    let bytes = detector.to_bytes().expect("bytes");
    let device = auscult_model::default_device();
    let reason = |bytes: &[u8]| match Detector::from_bytes(bytes, &device) {
        Err(ModelError::Format(reason)) => reason,
        other => panic!("expected a format error, got {other:?}"),
    };
    assert!(reason(&bytes[..bytes.len() - 10]).contains("truncated"));
    assert!(reason(b"RIFF....WAVEfmt ").contains("not an auscult model"));
    let mut flipped = bytes.clone();
    flipped[30] ^= 0xff;
    assert!(!reason(&flipped).is_empty());

    // Well-formed files whose metadata contradicts the network are refused too.
    let (info, weights) = auscult_model::file::decode(&bytes).expect("decode");
    let mut fewer_classes = info.clone();
    fewer_classes.classes.pop();
    let forged = auscult_model::file::encode(&fewer_classes, weights).expect("encode");
    assert!(reason(&forged).contains("class labels"));
    let mut bad_hop = info.clone();
    bad_hop.window_hop = 0;
    let forged = auscult_model::file::encode(&bad_hop, weights).expect("encode");
    assert!(reason(&forged).contains("hop"));
    for half_width in [0, 64, usize::MAX] {
        let mut bad_contour = info.clone();
        bad_contour.profiles[0].spectrum = SpectrumForm::Contour { half_width };
        let forged = auscult_model::file::encode(&bad_contour, weights).expect("encode");
        assert!(
            reason(&forged).contains("contour half width"),
            "{half_width}"
        );
    }

    // A file from a newer build is refused by name, not misread; the format before contours
    // (format 1, whose profiles all judge by level) is still read.
    let format_at = 8;
    let mut newer = bytes.clone();
    newer[format_at..format_at + 4]
        .copy_from_slice(&(auscult_model::file::FORMAT + 1).to_le_bytes());
    assert!(reason(&newer).contains("this build reads formats"));
    let mut older = bytes.clone();
    older[format_at..format_at + 4].copy_from_slice(&1_u32.to_le_bytes());
    assert!(Detector::from_bytes(&older, &device).is_ok());
}

#[test]
fn enrolled_machines_get_their_own_profiles_and_others_fall_back() {
    let clips = samples();
    let mut detector = trained_once(&clips);
    // Valve recordings presented as a machine type the network never heard of.
    let pumps: Vec<Clip> = clips
        .iter()
        .filter(|c| c.recording.machine_type == "valve")
        .cloned()
        .map(|mut c| {
            c.recording.machine_type = "pump".into();
            c.recording.machine_id = "id_01".into();
            c
        })
        .collect();
    let report =
        enroll::enroll(&mut detector, &pumps, 90.0, enroll::Enrolment::Add).expect("enroll");
    let machine = report
        .iter()
        .find(|e| e.scope == Scope::Machine)
        .expect("machine profile");
    assert_eq!(machine.machine, key("pump", "id_01"));
    assert_eq!(
        machine.detector,
        DetectorKind::Bands,
        "a new type gets the band detector"
    );
    assert_eq!(machine.clips, 6, "only the six normal recordings");
    assert!(
        report
            .iter()
            .any(|e| e.scope == Scope::MachineType && e.machine == key("pump", "*"))
    );

    let valve_type = detector
        .info
        .profiles
        .iter()
        .find(|p| p.key() == key("valve", "*"))
        .expect("the valve type's profile");
    assert_eq!(
        valve_type.machines,
        ["section_00"],
        "the machines it was fitted from"
    );
    let scope_for =
        |detector: &Detector, machine: MachineKey| detector.profile_for(&machine).map(|p| p.scope);
    assert_eq!(
        scope_for(&detector, key("pump", "id_01")),
        Some(Scope::Machine)
    );
    // One pump's normal sound is not another's: a type's profile fitted from one machine judges
    // no other machine, and the error names the one the model knows.
    let unenrolled = detector.judging_profile(&key("pump", "id_02"));
    assert!(
        matches!(
            &unenrolled,
            Err(ModelError::UnenrolledMachine { machine, known })
                if machine == "pump/id_02" && known == "pump/id_01"
        ),
        "{unenrolled:?}"
    );
    assert_eq!(
        scope_for(&detector, key("valve", "section_07")),
        None,
        "the valve type's profile was fitted from one valve"
    );
    assert!(matches!(
        detector.judging_profile(&key("drill", "id_00")),
        Err(ModelError::UnknownMachine(named)) if named == "drill/id_00"
    ));
    // The same recordings presented as a second pump add no machine to the type's profile: a
    // recording two pumps kept counts once, and the type still knows one pump.
    let as_second: Vec<Clip> = pumps
        .iter()
        .filter(|c| !c.is_anomaly() && c.recording.attribute == "pat_00")
        .cloned()
        .map(|mut c| {
            c.recording.machine_id = "id_03".into();
            c
        })
        .collect();
    assert_eq!(type_refit_by(&mut detector, &as_second), (0, 6));
    assert_eq!(scope_for(&detector, key("pump", "id_02")), None);
    // Recordings of its own (the same sound half a second later) make it a second pump, and the
    // type's profile a type's: other pumps are judged by it.
    let second_pump: Vec<Clip> = as_second
        .into_iter()
        .map(|mut c| {
            let mut samples = c.samples.to_vec();
            samples.rotate_left(8_000);
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            c.content_sha256 = hex::encode(sha2::Sha256::digest(&bytes));
            c.samples = samples.into();
            c.recording.machine_id = "id_04".into();
            c
        })
        .collect();
    assert_eq!(type_refit_by(&mut detector, &second_pump), (3, 6));
    let pump_type = detector
        .info
        .profiles
        .iter()
        .find(|p| p.key() == key("pump", "*"))
        .expect("the pump type's profile");
    assert_eq!(pump_type.machines, ["id_01", "id_04"]);
    assert_eq!(
        scope_for(&detector, key("pump", "id_02")),
        Some(Scope::MachineType)
    );
    // A machine judged by its type's profile hears impulsiveness as its own machine's would.
    for machine in [key("pump", "id_01"), key("pump", "id_02")] {
        let profile = detector.profile_for(&machine).expect("profile");
        assert_eq!(
            profile.impulsiveness.as_ref().map(Vec::len),
            Some(IMPULSE_SCALES.len()),
            "{machine}"
        );
    }

    // The dull valve clicks show in the clip's band peaks: the anomalous recordings stand out
    // against the cross-fitted threshold.
    let flagged = pumps
        .iter()
        .filter(|c| c.is_anomaly())
        .filter(|c| {
            let assessment = detector
                .assess(&detector.hear(&c.samples), Some(&c.machine()))
                .expect("assess");
            assessment.verdict == Verdict::Anomalous
        })
        .count();
    assert!(flagged >= 5, "{flagged} of 6 anomalous recordings flagged");

    // A recording already enrolled counts once; a new one joins the six the profile kept.
    let again = enroll::enroll(&mut detector, &pumps, 90.0, enroll::Enrolment::Add)
        .expect("the same recordings again");
    assert!(again.iter().any(|e| e.machine == key("pump", "id_01")
        && (e.clips, e.earlier_clips, e.already_known) == (0, 6, 6)));
    let one: Vec<Clip> = clips
        .iter()
        .filter(|c| c.recording.machine_type == "fan" && !c.is_anomaly())
        .take(1)
        .cloned()
        .map(|mut c| {
            c.recording.machine_type = "pump".into();
            c.recording.machine_id = "id_01".into();
            c
        })
        .collect();
    let one_more = enroll::enroll(&mut detector, &one, 90.0, enroll::Enrolment::Add)
        .expect("one more recording joins the six the profile kept");
    assert!(
        one_more
            .iter()
            .any(|e| e.machine == key("pump", "id_01") && (e.clips, e.earlier_clips) == (1, 6))
    );
    let too_few = enroll::enroll(&mut detector, &one, 90.0, enroll::Enrolment::Replace);
    assert!(
        too_few.is_err_and(|e| e.to_string().contains("at least three")),
        "one recording alone is not a normal profile"
    );
}

#[test]
fn enrolling_a_known_machine_adds_to_the_recordings_its_profile_kept() {
    let (new_pattern, known): (Vec<Clip>, Vec<Clip>) = samples()
        .into_iter()
        .partition(|c| c.recording.attribute == "pat_02");
    let trained = trained_once(&known);
    let valve = key("valve", "section_00");
    let own_profile = |detector: &Detector| -> MachineProfile {
        detector
            .info
            .profiles
            .iter()
            .find(|p| p.scope == Scope::Machine && p.key() == valve)
            .cloned()
            .expect("the valve's own profile")
    };
    let trained_normals = known
        .iter()
        .filter(|c| c.machine() == valve && !c.is_anomaly())
        .count();
    let kept = own_profile(&trained).kept.map_or(0, |k| k.len());
    assert_eq!(
        kept, trained_normals,
        "a trained profile keeps its machine's normal recordings, training and validation alike"
    );
    assert!(
        trained
            .info
            .profiles
            .iter()
            .filter(|p| p.scope == Scope::MachineType)
            .all(|p| p.kept.is_none()),
        "a machine type's profile keeps nothing its machines' profiles do not"
    );
    // What a profile keeps survives the model file, and is what enrolling adds to.
    let bytes = trained.to_bytes().expect("bytes");
    let reload = || Detector::from_bytes(&bytes, trained.device()).expect("reload");
    assert_eq!(own_profile(&reload()).kept.map_or(0, |k| k.len()), kept);
    let new_normals: Vec<Clip> = new_pattern
        .iter()
        .filter(|c| !c.is_anomaly())
        .cloned()
        .collect();

    let mut added = reload();
    let report = enroll::enroll(&mut added, &new_normals, 90.0, enroll::Enrolment::Add)
        .expect("add a pattern");
    let machine = report
        .iter()
        .find(|e| e.scope == Scope::Machine)
        .expect("machine");
    assert_eq!(
        (machine.clips, machine.earlier_clips, machine.replaced),
        (new_normals.len(), kept, false)
    );
    let profile = own_profile(&added);
    assert_eq!(profile.normal_clips, kept + new_normals.len());
    assert_eq!(
        profile.kept.map(|k| k.len()),
        Some(kept + new_normals.len())
    );
    let machine_type = report
        .iter()
        .find(|e| e.scope == Scope::MachineType)
        .expect("the valve type's profile is refitted with the new pattern");
    assert_eq!(
        (machine_type.clips, machine_type.earlier_clips),
        (new_normals.len(), kept)
    );
    let again = enroll::enroll(&mut added, &new_normals, 90.0, enroll::Enrolment::Add)
        .expect("the same clips again");
    assert_eq!(
        again
            .iter()
            .map(|e| (e.scope, e.clips, e.already_known))
            .collect::<Vec<_>>(),
        vec![(Scope::Machine, 0, new_normals.len())],
        "clips the profile holds count once, and nothing is refitted"
    );
    assert_eq!(own_profile(&added).normal_clips, kept + new_normals.len());

    let mut replaced = reload();
    let report = enroll::enroll(
        &mut replaced,
        &new_normals,
        90.0,
        enroll::Enrolment::Replace,
    )
    .expect("replace");
    assert_eq!(
        report.len(),
        1,
        "the type's profile is left as it was: {report:?}"
    );
    assert_eq!((report[0].earlier_clips, report[0].replaced), (0, true));
    assert_eq!(own_profile(&replaced).normal_clips, new_normals.len());

    // A profile from before profiles kept their recordings can only be replaced, and says so.
    let mut older = reload();
    older.info.profiles.iter_mut().for_each(|p| {
        p.kept = None;
        p.fitted_from.clear();
    });
    let report = enroll::enroll(&mut older, &new_normals, 90.0, enroll::Enrolment::Add)
        .expect("enrol into an older model");
    let machine = report
        .iter()
        .find(|e| e.scope == Scope::Machine)
        .expect("machine");
    assert_eq!((machine.earlier_clips, machine.replaced), (0, true));
    assert_eq!(own_profile(&older).normal_clips, new_normals.len());
}
