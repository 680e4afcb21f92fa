//! `auscult train | evaluate | score | enroll` on the sample recordings, through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/recordings")
}

fn auscult(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auscult"))
        .args(args)
        .output()
        .expect("run auscult")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "auscult failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A small model, trained once per test that needs one.
fn train_tiny(dir: &Path) -> PathBuf {
    let model = dir.join("tiny.model");
    let summary = json(&auscult(&[
        "train",
        "--data",
        path(&samples()),
        "--out",
        path(&model),
        "--epochs",
        "2",
        "--channels",
        "4,8,8",
        "--hidden",
        "32,32,16",
        "--validation-fraction",
        "0.34",
        "--json",
    ]));
    assert_eq!(
        summary["classes"].as_array().map(Vec::len),
        Some(3),
        "valve × 2 patterns and fan, from their normal recordings"
    );
    assert!(
        summary["version"].as_str().is_some_and(|v| v.len() == 17),
        "{summary}"
    );
    model
}

#[test]
fn evaluate_reports_every_machine_type_in_the_documented_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = train_tiny(dir.path());
    let output = auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--model",
        path(&model),
        "--json",
        "--include-training-files",
    ]);
    // One normal fan recording is too few for a profile: the fan is unknown to this model, and
    // said to be, never judged by the valve's normal.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown machine fan/id_00") && stderr.contains("enrol it first"),
        "{stderr}"
    );
    let report = json(&output);
    let types = report["machine_types"].as_array().expect("machine_types");
    let names: Vec<&str> = types
        .iter()
        .filter_map(|t| t["machine_type"].as_str())
        .collect();
    assert_eq!(names, ["valve"]);
    for t in types {
        for key in ["n_normal", "n_anomaly", "precision", "recall"] {
            assert!(t[key].is_number(), "{key} in {t}");
        }
        for key in ["auc", "pauc", "f1", "false_alarm_rate"] {
            let figure = &t[key];
            assert!(
                ["value", "low", "high"]
                    .iter()
                    .all(|k| figure[*k].is_number()),
                "{key} with its interval in {t}"
            );
            assert!(figure["low"].as_f64() <= figure["value"].as_f64());
            assert!(figure["value"].as_f64() <= figure["high"].as_f64());
        }
        for part in ["windows_auc", "bands_auc", "impulsiveness_auc"] {
            assert!(t["parts"][part]["value"].is_number(), "{part} in {t}");
        }
        // The network has a class for the valve: the share of its clips it names as the valve.
        let accuracy = t["class_accuracy"].as_f64();
        assert!(
            accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)),
            "class_accuracy in {t}"
        );
        for statistic in ["crest_factor", "rms_level", "spectral_centroid"] {
            assert!(
                t["baselines"][statistic]["auc"]["value"].is_number(),
                "{statistic} baseline in {t}"
            );
        }
    }
    assert_eq!(types[0]["n_normal"], 6);
    assert_eq!(types[0]["n_anomaly"], 6);
    assert!(report["mean_auc"].is_number());

    // Every judged clip is listed with its label, verdict and parts, so a false alarm can be
    // traced to the part that raised it; the counts and the false-alarm rate follow from them.
    let clips = report["clips"].as_array().expect("clips");
    assert_eq!(
        clips.len(),
        12,
        "the valve's six normal and six faulty recordings"
    );
    let labelled = |label: &str| clips.iter().filter(|c| c["label"] == label).count();
    assert_eq!((labelled("normal"), labelled("anomaly")), (6, 6));
    for clip in clips {
        assert_eq!(clip["machine"], "valve/section_00", "{clip}");
        assert!(
            clip["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(".wav")
                    && f.contains(clip["attribute"].as_str().unwrap_or("?"))),
            "{clip}"
        );
        let score = clip["score"].as_f64().expect("score");
        let flagged = score > 1.0;
        assert_eq!(
            clip["verdict"],
            if flagged { "anomalous" } else { "normal" },
            "the verdict is the score over its threshold: {clip}"
        );
        assert!(
            ["windows", "bands", "band_peaks", "impulsiveness"]
                .iter()
                .any(|p| clip["parts"][*p].is_number()),
            "{clip}"
        );
        // Where the impulsiveness is judged, the clip says which way it departs.
        let side = &clip["parts"]["impulsiveness_side"];
        if clip["parts"]["impulsiveness"].is_number() {
            assert!(side == "duller" || side == "sharper", "{clip}");
        } else {
            assert!(side.is_null(), "{clip}");
        }
    }
    let flagged_normal = clips
        .iter()
        .filter(|c| c["label"] == "normal" && c["verdict"] == "anomalous")
        .count() as f64;
    let far = types[0]["false_alarm_rate"]["value"].as_f64().expect("FAR");
    assert!(
        (far - flagged_normal / 6.0).abs() < 1e-3,
        "{far} vs {flagged_normal} of 6"
    );

    // By default the recordings the model learned from are left out: here, every normal one (the
    // model never hears a fault).
    let unseen = auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--model",
        path(&model),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&unseen.stderr);
    assert!(
        stderr.contains("skipped 7 recordings the model was trained, validated or enrolled on"),
        "{stderr}"
    );
    let faults_only: serde_json::Value = serde_json::from_slice(&unseen.stdout).expect("JSON");
    for t in faults_only["machine_types"].as_array().expect("types") {
        assert_eq!(t["n_normal"], 0, "{t}");
        assert!(t["auc"].is_null(), "no AUC without normal recordings: {t}");
    }
}

#[test]
fn evaluate_leaves_out_what_the_model_enrolled() {
    // Three of the sample valves' normal recordings, enrolled into the shipped model first: judged
    // again, they would flatter it, as the files it trained on would.
    let dir = tempfile::tempdir().expect("tempdir");
    let enrolling = dir.path().join("enrolling");
    std::fs::create_dir_all(&enrolling).expect("mkdir");
    let enrolled = [
        "section_00_source_test_normal_0010_pat_00.wav",
        "section_00_source_test_normal_0016_pat_00.wav",
        "section_00_target_test_normal_0014_pat_02.wav",
    ];
    let mut manifest = String::from("path,machine_type,machine_id,attribute,label\n");
    for name in enrolled {
        std::fs::copy(samples().join(name), enrolling.join(name)).expect("copy");
        let pattern = &name[name.len() - 10..name.len() - 4];
        manifest += &format!("{name},valve,section_00,{pattern},normal\n");
    }
    std::fs::write(enrolling.join("manifest.csv"), manifest).expect("write manifest");
    let judged_all = json(&auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--json",
    ]));
    let output = auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--enroll",
        path(&enrolling),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("skipped 3 recordings the model was trained, validated or enrolled on"),
        "{stderr}"
    );
    let normal_valves = |report: &serde_json::Value| {
        report["machine_types"]
            .as_array()
            .and_then(|types| types.iter().find(|t| t["machine_type"] == "valve"))
            .and_then(|valve| valve["n_normal"].as_u64())
    };
    let report = json(&output);
    assert_eq!(
        normal_valves(&report),
        normal_valves(&judged_all).map(|n| n - 3),
        "{report}"
    );
    // The refitted valve profile says what it expects of healthy clips; the shipped one, calibrated
    // before profiles checked themselves, says nothing.
    let check = |report: &serde_json::Value| {
        report["machine_types"]
            .as_array()
            .and_then(|types| types.iter().find(|t| t["machine_type"] == "valve"))
            .map(|valve| valve["false_alarm_check"].clone())
            .unwrap_or_default()
    };
    assert!(check(&judged_all).is_null(), "{judged_all}");
    let refitted = check(&report);
    assert!(
        refitted["clips"].as_u64().is_some_and(|clips| clips > 3)
            && refitted["flagged"].as_u64() <= refitted["clips"].as_u64(),
        "{refitted}"
    );
    let clips = report["clips"].as_array().expect("clips");
    assert!(
        clips.iter().all(|c| enrolled
            .iter()
            .all(|name| !c["file"].as_str().unwrap_or_default().ends_with(name))),
        "an enrolled recording was judged: {report}"
    );
}

#[test]
fn evaluate_draws_enrolments_and_reports_their_spread() {
    let output = auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--protocol",
        "leave-one-pattern-out",
        "--enroll-clips",
        "1",
        "--enroll-draws",
        "4",
        "--json",
    ]);
    let report = json(&output);
    let rounds = report["rounds"].as_array().expect("rounds");
    for pattern in ["pat_00", "pat_02"] {
        let draws: Vec<&serde_json::Value> = rounds
            .iter()
            .filter(|r| r["held_out_attribute"] == pattern)
            .collect();
        let numbers: Vec<u64> = draws.iter().filter_map(|r| r["draw"].as_u64()).collect();
        assert_eq!(numbers, [0, 1, 2, 3], "four draws leaving {pattern} out");
        for round in &draws {
            assert_eq!(round["enrolled_clips"], 1, "{round}");
            let files = round["enrolled_files"].as_array().expect("enrolled_files");
            assert!(
                files.len() == 1 && files[0].as_str().is_some_and(|f| f.contains(pattern)),
                "one clip of the held-out pattern: {round}"
            );
            let machine = round["refitted"]
                .as_array()
                .expect("refitted")
                .iter()
                .find(|r| r["scope"] == "machine")
                .expect("the valve's own profile refitted");
            assert_eq!(machine["machine"], "valve/section_00");
            assert_eq!(machine["new_clips"], 1, "{machine}");
            // The clips tested are the held-out pattern's, never the one it enrolled.
            let tested = round["clips"].as_array().expect("clips");
            assert!(!tested.is_empty(), "{round}");
            assert!(
                tested
                    .iter()
                    .all(|c| c["attribute"] == pattern && c["file"] != files[0]),
                "{round}"
            );
        }
    }
    let spreads = report["over_draws"].as_array().expect("over_draws");
    assert_eq!(spreads.len(), 2, "one spread per held-out pattern");
    for spread in spreads {
        assert_eq!(spread["draws"], 4, "{spread}");
        for figure in ["auc", "f1", "false_alarm_rate"] {
            let f = &spread[figure];
            let (min, mean, max) = (f["min"].as_f64(), f["mean"].as_f64(), f["max"].as_f64());
            assert!(
                min.is_some() && min <= mean && mean <= max,
                "{figure} as min ≤ mean ≤ max: {spread}"
            );
        }
    }

    // Where nothing is enrolled there is nothing to draw, and saying so beats a silent single draw.
    let data = samples();
    for args in [
        &["--enroll-draws", "3"][..],
        &["--protocol", "leave-one-pattern-out", "--enroll-draws", "3"][..],
    ] {
        let mut all = vec!["evaluate", "--data", path(&data)];
        all.extend_from_slice(args);
        let refused = auscult(&all);
        assert!(!refused.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("--enroll-draws"), "{stderr}");
    }
}

#[test]
fn score_explains_its_verdict_and_enroll_onboards_a_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = train_tiny(dir.path());
    let file = samples().join("section_00_source_test_anomaly_0028_pat_00.wav");
    let scored = json(&auscult(&[
        "score",
        path(&file),
        "--model",
        path(&model),
        "--machine",
        "valve/section_00",
        "--json",
    ]));
    let first = &scored[0];
    assert!(
        matches!(first["verdict"].as_str(), Some("normal" | "anomalous")),
        "{first}"
    );
    assert!(
        first["class"]
            .as_str()
            .is_some_and(|c| c.starts_with("valve/") || c.starts_with("fan/"))
    );
    assert!(first["anomaly_score"].as_f64().is_some_and(f64::is_finite));
    assert!(first["threshold"].as_f64().is_some_and(f64::is_finite));
    assert_eq!(first["machine"], "valve/section_00");
    // A clip's score is its furthest part, each part in units of its own normal range.
    let parts: Vec<f64> = ["windows", "band_spectrum", "band_peaks", "impulsiveness"]
        .iter()
        .map(|name| first["parts"][name].as_f64().unwrap_or(f64::NAN))
        .collect();
    assert!(parts.iter().all(|p| p.is_finite() && *p >= 0.0), "{first}");
    let furthest = parts.iter().copied().fold(0.0, f64::max);
    assert!(
        first["anomaly_score"]
            .as_f64()
            .is_some_and(|score| (score - furthest).abs() < 2e-3),
        "{first}"
    );
    let bands = first["top_bands"].as_array().expect("top_bands");
    assert_eq!(bands.len(), 3);
    for band in bands {
        assert!(band["low_hz"].as_f64() < band["high_hz"].as_f64(), "{band}");
        assert!(band["departure_db"].is_number() && band["z"].is_number());
    }

    // A new machine: the valve recordings under another name.
    let pumps = dir.path().join("pumps");
    std::fs::create_dir_all(&pumps).expect("mkdir");
    let manifest = std::fs::read_to_string(samples().join("manifest.csv")).expect("manifest");
    let renamed: String = manifest
        .lines()
        .enumerate()
        .filter(|(i, line)| *i == 0 || line.contains(",valve,"))
        .map(|(i, line)| {
            let line = if i == 0 {
                line.to_owned()
            } else {
                let file = line.split(',').next().unwrap_or_default();
                let absolute = samples().join(file);
                line.replacen(file, path(&absolute), 1)
                    .replace(",valve,section_00,", ",pump,id_01,")
            };
            line + "\n"
        })
        .collect();
    std::fs::write(pumps.join("manifest.csv"), renamed).expect("write manifest");
    let enrol_pumps = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "enroll",
            "--data",
            path(&pumps),
            "--model",
            path(&model),
            "--out",
            path(&out),
        ];
        args.extend_from_slice(extra);
        auscult(&args)
    };
    let enrolled_model = dir.path().join("enrolled.model");
    let enrolling = enrol_pumps("enrolled.model", &["--json"]);
    let enrolled = json(&enrolling);
    let warnings = String::from_utf8_lossy(&enrolling.stderr);
    assert!(
        warnings.contains("pump/id_01 was enrolled from 6 normal recordings")
            && warnings.contains("uncertain"),
        "six recordings make an uncertain threshold, and the user is told: {warnings}"
    );
    let machine = enrolled
        .as_array()
        .and_then(|a| a.iter().find(|e| e["machine"] == "pump/id_01"))
        .expect("pump/id_01 enrolled");
    assert_eq!(machine["detector"], "bands");
    assert_eq!(machine["clips"], 6);
    assert_eq!(machine["earlier_clips"], 0);
    // What to expect of it: each of its six recordings judged by ranges fitted without it.
    let check = &machine["false_alarm_check"];
    assert_eq!(check["clips"], 6, "{machine}");
    let flagged = check["flagged"].as_u64().expect("flagged");
    assert!(flagged <= 6, "{check}");
    assert_eq!(
        check["rate"].as_f64(),
        Some(((flagged as f64 / 6.0) * 1e4).round() / 1e4)
    );
    // …and what that costs a pager under the rule the deployments run, 40 of 60.
    let pages = |rule: auscult_store::AlertRule| {
        (rule.live_false_alerts_per_day(flagged as f64 / 6.0) * 1e6).round() / 1e6
    };
    let quick_rule = auscult_store::AlertRule {
        fire_at: 3,
        window: 5,
        clear_at: 0,
    };
    assert_eq!(
        machine["false_alerts_per_day"],
        serde_json::json!({"fire_at": 40, "window": 60, "expected": pages(auscult_store::AlertRule::DEPLOYED)}),
        "{machine}"
    );
    // `model show` reads the same back from the file, under the rule it is asked about.
    let shown = json(&auscult(&[
        "model",
        "show",
        "--model",
        path(&enrolled_model),
        "--alert-rule",
        "3/5",
        "--json",
    ]));
    let pump = shown["profiles"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["machine"] == "pump/id_01"))
        .expect("pump/id_01 shown");
    assert_eq!(pump["false_alarm_check"], machine["false_alarm_check"]);
    assert_eq!(pump["fitted_from"], 6);
    assert_eq!(
        pump["false_alerts_per_day"]["expected"].as_f64(),
        Some(pages(quick_rule)),
        "{pump}"
    );
    assert_eq!(
        shown["alert_rule"],
        serde_json::json!({"fire_at": 3, "window": 5})
    );
    // The shipped model's profiles were calibrated before profiles checked themselves, and say so
    // rather than promise a rate.
    let shipped = auscult(&["model", "show"]);
    let shipped = String::from_utf8_lossy(&shipped.stdout);
    assert!(
        shipped.contains("false alerts per healthy sensor, 40 of 60")
            && shipped
                .lines()
                .any(|line| line.trim_start().starts_with("fan/id_00")
                    && line.contains("none: calibrated before checks")),
        "{shipped}"
    );
    // The pump type's profile is fitted from one pump, says so, and judges no other.
    let pump_type = enrolled
        .as_array()
        .and_then(|a| a.iter().find(|e| e["machine"] == "pump/*"))
        .expect("the pump type's profile");
    assert_eq!(pump_type["machines"], serde_json::json!(["id_01"]));
    assert!(machine.get("machines").is_none(), "{machine}");
    let another = auscult(&[
        "score",
        path(&file),
        "--model",
        path(&enrolled_model),
        "--machine",
        "pump/id_02",
    ]);
    let refused = String::from_utf8_lossy(&another.stderr);
    assert!(
        !another.status.success()
            && refused.contains("unknown machine pump/id_02")
            && refused.contains("only as pump/id_01"),
        "{refused}"
    );
    let told = enrol_pumps("told.model", &[]);
    let told = String::from_utf8_lossy(&told.stdout);
    assert!(
        told.contains("refitted pump/* from 6 recordings (6 new to it) of pump/id_01")
            && told.contains("judges no other pump until a second one is enrolled"),
        "{told}"
    );
    assert!(
        told.contains(&format!(
            "false alarms: {flagged} of its 6 normal recordings are out of the ranges fitted without each"
        )) && told.contains("under the alert rule 40 of 60"),
        "{told}"
    );
    // Under a demo's rule, 3 of 5, every false clip pages: the user is warned when that is more
    // than once a day.
    let quick = enrol_pumps("quick.model", &["--alert-rule", "3/5", "--json"]);
    let quick_report = json(&quick);
    let quick_machine = quick_report
        .as_array()
        .and_then(|a| a.iter().find(|e| e["machine"] == "pump/id_01"))
        .expect("pump/id_01 enrolled");
    assert_eq!(
        quick_machine["false_alerts_per_day"],
        serde_json::json!({"fire_at": 3, "window": 5, "expected": pages(quick_rule)}),
    );
    let quick_warnings = String::from_utf8_lossy(&quick.stderr);
    assert_eq!(
        quick_warnings.contains("pump/id_01: ")
            && quick_warnings.contains("under the alert rule 3 of 5 that is about"),
        pages(quick_rule) > 1.0,
        "{quick_warnings}"
    );
    let refused = enrol_pumps("refused.model", &["--alert-rule", "70/60"]);
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.contains("`70/60`: the window must hold 1 to 3600 verdicts"),
        "{refused}"
    );

    // Enrolling a known machine again adds to the recordings its profile kept, unless told to
    // replace them.
    let again = |extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join("again.model");
        let mut args = vec![
            "enroll",
            "--data",
            path(&pumps),
            "--model",
            path(&enrolled_model),
            "--out",
            path(&out),
            "--json",
        ];
        args.extend_from_slice(extra);
        let report = json(&auscult(&args));
        report
            .as_array()
            .and_then(|a| a.iter().find(|e| e["machine"] == "pump/id_01").cloned())
            .expect("pump/id_01 enrolled again")
    };
    // The same six recordings again: already in the profile, counted once.
    let same = again(&[]);
    assert_eq!(
        (
            &same["clips"],
            &same["earlier_clips"],
            &same["already_known"]
        ),
        (&0.into(), &6.into(), &6.into())
    );
    assert_eq!(same["replaced"], false);
    let replaced = again(&["--replace"]);
    assert_eq!(
        (&replaced["clips"], &replaced["earlier_clips"]),
        (&6.into(), &0.into())
    );
    assert_eq!(replaced["replaced"], true);
    let scored = json(&auscult(&[
        "score",
        path(&file),
        "--model",
        path(&enrolled_model),
        "--machine",
        "pump/id_01",
        "--json",
    ]));
    assert_eq!(scored[0]["profile_scope"], "machine");

    // Without --machine, the machine is the one the dataset's root manifest lists the file as.
    let plant = dir.path().join("plant");
    std::fs::create_dir_all(plant.join("hall_a")).expect("mkdir");
    let copied = plant.join("hall_a").join("recording.wav");
    std::fs::copy(&file, &copied).expect("copy");
    std::fs::write(
        plant.join("manifest.csv"),
        "path,machine_type,machine_id,label\nhall_a/recording.wav,pump,id_01,normal\n",
    )
    .expect("write manifest");
    let scored = json(&auscult(&[
        "score",
        path(&copied),
        "--model",
        path(&enrolled_model),
        "--json",
    ]));
    assert_eq!(scored[0]["machine"], "pump/id_01", "{scored}");
    let unlisted = plant.join("hall_a").join("unlisted.wav");
    std::fs::copy(&file, &unlisted).expect("copy");
    let refused = auscult(&["score", path(&unlisted), "--model", path(&enrolled_model)]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("which machine is this?"),
        "a file no manifest lists gets no verdict"
    );
}

#[test]
fn the_shipped_model_hears_faults_in_recordings_it_never_heard() {
    let report = json(&auscult(&[
        "evaluate",
        "--data",
        path(&samples()),
        "--json",
    ]));
    assert_eq!(
        report["skipped_training_files"], 0,
        "the samples are the model's held-out test split"
    );
    let figure = |machine_type: &str, key: &str| {
        report["machine_types"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["machine_type"] == machine_type))
            .and_then(|t| t[key]["value"].as_f64().or_else(|| t[key].as_f64()))
            .unwrap_or(0.0)
    };
    // Six normal and six faulty valves, in both operating patterns: enough to rank, and to see
    // whether the threshold calibrated on other clips sits between them.
    let valve = figure("valve", "auc");
    assert!(valve >= 0.85, "valve AUC {valve}");
    let f1 = figure("valve", "f1");
    assert!(f1 >= 0.8, "valve F1 at the calibrated threshold {f1}");
    assert_eq!(figure("valve", "false_alarm_rate"), 0.0);
    // One normal and one faulty fan rank nothing. The model must hear the fault itself, by the
    // fan's own profile — its hum has moved, in one band, by many times that band's normal spread,
    // where the healthy fan's strongest departure is the knock in its peaks — and flag it.
    let fan_samples = ["anomaly_00000001", "normal_00000004"]
        .map(|name| samples().join(format!("fan_id_00_{name}.wav")));
    let scored = json(&auscult(&[
        "score",
        path(&fan_samples[0]),
        path(&fan_samples[1]),
        "--json",
    ]));
    let strongest = |clip: usize| {
        let band = &scored[clip]["top_bands"][0];
        (
            band["measure"].as_str().unwrap_or_default().to_owned(),
            band["z"].as_f64().unwrap_or(0.0),
        )
    };
    let (faulty_measure, faulty_z) = strongest(0);
    assert_eq!(scored[0]["profile_scope"], "machine");
    assert_eq!(
        faulty_measure, "mean",
        "the faulty fan's hum moved: {scored}"
    );
    assert!(
        faulty_z.abs() >= 6.0,
        "the faulty fan departs by {faulty_z} σ"
    );
    assert_eq!(strongest(1).0, "peak", "the healthy fan's knock: {scored}");
    // The band spectrum flags the faulty fan (its hum moved), and so does its steadier roar,
    // duller than the healthy fan's; the furthest part is the score, and `score` says so.
    let part = |name: &str| scored[0]["parts"][name].as_f64().unwrap_or(0.0);
    let spectrum = part("band_spectrum");
    assert!(
        spectrum > 1.0,
        "the moved hum is out of the spectrum's range: {scored}"
    );
    assert_eq!(
        scored[0]["parts"]["impulsiveness_side"], "duller",
        "the faulty fan's roar is steadier than a healthy fan's: {scored}"
    );
    let furthest = ["windows", "band_spectrum", "band_peaks", "impulsiveness"]
        .map(part)
        .into_iter()
        .fold(0.0, f64::max);
    assert_eq!(scored[0]["anomaly_score"].as_f64(), Some(furthest));
    let text =
        String::from_utf8_lossy(&auscult(&["score", path(&fan_samples[0])]).stdout).into_owned();
    let printed = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("parts:"))
        .and_then(|parts| {
            parts
                .split(',')
                .find_map(|part| part.trim().strip_prefix("band spectrum "))
        })
        .and_then(|value| value.parse::<f64>().ok());
    assert_eq!(printed, Some(spectrum), "{text}");
    assert!(
        text.contains(&format!(
            "impulsiveness {:.3} (duller than normal)",
            part("impulsiveness")
        )),
        "{text}"
    );
    let fan = report["machine_types"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["machine_type"] == "fan"))
        .expect("fan figures");
    assert_eq!(
        (fan["n_normal"].as_u64(), fan["n_anomaly"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(fan["profile_scope"], "machine");
    // The shipped fan profile learned from five normal recordings, one of them with the hall's
    // broadband noise 10 dB louder over the top bands: judged by the spectrum's contour rather
    // than its level, that clip stays close to the others and the fan's range stays narrow
    // enough to hear the moved hum.
    assert_eq!(figure("fan", "recall"), 1.0, "the faulty fan is flagged");
}

#[test]
fn a_folder_is_judged_file_by_file_in_name_order() {
    // A plant files recordings by hall: a folder named to `score` is every WAV below it, in name
    // order, the machine of each from the manifest at the folder's root. The halls are made out
    // of order, so that the order judged is the names', not the disk's. The manifest has no label
    // column: whether today's recordings are faulty is what the plant asks.
    let dir = tempfile::tempdir().expect("tempdir");
    let plant = dir.path().join("plant");
    let halls = [
        ("hall_c", "section_00_source_test_anomaly_0024_pat_00.wav"),
        ("hall_a", "section_00_source_test_normal_0010_pat_00.wav"),
        ("hall_d", "section_00_source_test_normal_0016_pat_00.wav"),
        ("hall_b", "section_00_source_test_anomaly_0028_pat_00.wav"),
    ];
    let mut manifest = String::from("path,machine_type,machine_id\n");
    for (hall, sample) in halls {
        std::fs::create_dir_all(plant.join(hall)).expect("mkdir");
        std::fs::copy(samples().join(sample), plant.join(hall).join(sample)).expect("copy");
        manifest += &format!("{hall}/{sample},valve,section_00\n");
    }
    std::fs::write(plant.join("manifest.csv"), manifest).expect("write manifest");
    // Beside them: notes, a Mac's hidden metadata file, and a recording no manifest lists.
    std::fs::write(plant.join("hall_a").join("notes.txt"), "not a recording").expect("write");
    std::fs::write(plant.join("hall_a").join("._x.wav"), b"\0\x05\x16\x07").expect("write");
    std::fs::copy(
        samples().join("section_00_source_test_normal_0033_pat_00.wav"),
        plant.join("hall_d").join("unlisted.wav"),
    )
    .expect("copy");
    let named_twice = plant.join("hall_a").join(halls[1].1);

    let output = auscult(&["score", path(&plant), path(&named_twice), "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("unlisted.wav: no verdict: which machine is this?")
            && stderr.contains("1 of 5 files could not be scored"),
        "the unlisted recording is named, and the run fails: {stderr}"
    );
    let judged: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let judged = judged.as_array().expect("an array");
    let files: Vec<&str> = judged.iter().filter_map(|j| j["file"].as_str()).collect();
    let mut expected: Vec<String> = halls.iter().map(|(h, s)| format!("{h}/{s}")).collect();
    expected.sort();
    assert_eq!(files.len(), expected.len(), "{files:?}");
    for (file, expected) in files.iter().zip(&expected) {
        assert!(file.ends_with(expected.as_str()), "{files:?}");
    }
    // Each judged as it is when named alone.
    for entry in judged {
        let sample = entry["file"]
            .as_str()
            .and_then(|f| f.rsplit('/').next())
            .expect("file name");
        let alone = json(&auscult(&[
            "score",
            path(&samples().join(sample)),
            "--json",
        ]));
        assert_eq!(
            entry["anomaly_score"], alone[0]["anomaly_score"],
            "{sample}"
        );
        assert_eq!(entry["verdict"], alone[0]["verdict"], "{sample}");
    }
    let anomalous = judged
        .iter()
        .filter(|j| j["verdict"] == "anomalous")
        .count();
    let text = auscult(&["score", path(&plant)]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|line| line
            == format!(
                "5 recordings: {anomalous} anomalous, {} normal, 1 not scored",
                4 - anomalous
            )),
        "{text}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("hall_e")).expect("mkdir");
    let refused = auscult(&["score", path(&empty)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("empty: no .wav file in this folder or below it"),
        "{stderr}"
    );
}

#[test]
fn bad_recordings_and_manifests_are_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("broken");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("cut.wav"), b"RIFF\x10\0\0\0WAVEfmt ").expect("write");
    std::fs::write(
        data.join("manifest.csv"),
        "path,machine_type,machine_id,domain,attribute,label\ncut.wav,valve,s00,,,normal\n",
    )
    .expect("write");
    let output = auscult(&["evaluate", "--data", path(&data)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cut.wav"), "{stderr}");

    std::fs::write(
        data.join("manifest.csv"),
        "path,machine_type,machine_id,domain,attribute,label\ncut.wav,valve,s00,,,broken\n",
    )
    .expect("write");
    let output = auscult(&["evaluate", "--data", path(&data)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("manifest.csv, line 2, field `label`"),
        "{stderr}"
    );

    let output = auscult(&["score", path(&data.join("missing.wav"))]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("missing.wav: no such file"),
        "{stderr}"
    );
}
