//! `auscult score`: the verdict on individual recordings, with the bands that explain it.

use std::path::{Path, PathBuf};

use auscult_audio::manifest::Listings;
use auscult_audio::{AudioLimits, ChannelChoice};
use auscult_model::{Assessment, MachineKey};

use crate::commands::recordings::{self, ModelArg, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAV files to judge, or folders: every `.wav` in them and their subfolders, in name order
    /// (hidden files left out).
    #[arg(required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
    /// The machine that was recorded, as TYPE/ID (default: the one named by the nearest
    /// `manifest.csv` that lists the file, in its folder or above; without either there is no
    /// verdict: a verdict against the wrong machine's normal is worse than none).
    #[arg(long, value_parser = machine)]
    machine: Option<MachineKey>,
    /// Recorded channel to listen to (default: the model's).
    #[arg(long)]
    channel: Option<ChannelChoice>,
    /// Print JSON on stdout, one object per file in an array.
    #[arg(long)]
    json: bool,
}

fn machine(text: &str) -> Result<MachineKey, String> {
    match text.split_once('/') {
        Some((_, auscult_model::profile::ANY)) => Err(format!(
            "`{text}` names no machine: `{}` stands for any machine of a type; name the one recorded",
            auscult_model::profile::ANY
        )),
        Some((machine_type, machine_id)) if !machine_type.is_empty() && !machine_id.is_empty() => {
            Ok(MachineKey {
                machine_type: machine_type.into(),
                machine_id: machine_id.into(),
            })
        }
        _ => Err(format!("`{text}` is not TYPE/ID, e.g. valve/section_00")),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let detector = args.model.load()?;
    let channel = recordings::channel(&detector, args.channel)?;
    let mut results = Vec::new();
    let mut failures = 0;
    let mut listings = Listings::default();
    let files = wav_files(&args.files)?;
    for path in &files {
        let outcome = auscult_audio::load(
            path,
            channel,
            detector.info.spectrogram.sample_rate,
            AudioLimits::default(),
        )
        .map_err(anyhow::Error::from)
        .and_then(|audio| {
            let machine = match &args.machine {
                Some(machine) => machine.clone(),
                None => listed_machine(&mut listings, path)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no verdict: which machine is this? Name it with --machine TYPE/ID (this model knows {}), or enrol it first (`auscult enroll`)",
                        recordings::shown(path),
                        known_machines(&detector)
                    )
                })?,
            };
            let inference = detector.hear(&audio.samples);
            detector
                .assess(&inference, Some(&machine))
                .map_err(|e| anyhow::anyhow!("{}: {e}", recordings::shown(path)))
        });
        match outcome {
            Ok(assessment) => results.push((path, assessment)),
            Err(e) => {
                failures += 1;
                eprintln!("{e}");
            }
        }
    }
    if args.json {
        let json: Vec<serde_json::Value> = results
            .iter()
            .map(|(path, a)| json(path, a, &detector.info.version))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for (path, a) in &results {
            print(path, a);
        }
        if files.len() > 1 {
            let anomalous = results
                .iter()
                .filter(|(_, a)| a.verdict == auscult_model::assessment::Verdict::Anomalous)
                .count();
            println!(
                "{} recordings: {anomalous} anomalous, {} normal{}",
                files.len(),
                results.len() - anomalous,
                if failures > 0 {
                    format!(", {failures} not scored")
                } else {
                    String::new()
                }
            );
        }
    }
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} files could not be scored",
        files.len()
    );
    Ok(())
}

/// The files to judge: each file named, and every `.wav` under each folder named (its
/// subfolders too, in name order, as a plant's recordings are filed by hall or machine). A
/// folder without one is an error, not an empty answer.
fn wav_files(named: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in named {
        if path.is_dir() {
            let before = files.len();
            wavs_under(path, &mut files)?;
            anyhow::ensure!(
                files.len() > before,
                "{}: no .wav file in this folder or below it",
                recordings::shown(path)
            );
        } else {
            // A missing or unreadable file is reported with the others when it is read.
            files.push(path.clone());
        }
    }
    // A file named twice (itself and its folder) is judged once, where it first came.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

fn wavs_under(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let cannot_list =
        |e: std::io::Error| anyhow::anyhow!("{}: cannot list: {e}", recordings::shown(dir));
    // A linked folder is not followed: a link back up the tree would never end.
    let mut entries = std::fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|e| e.and_then(|e| Ok((e.path(), e.file_type()?.is_dir()))))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(cannot_list)?;
    entries.sort();
    for (entry, is_folder) in entries {
        // Hidden files are not recordings: a copy from a Mac brings a `._name.wav` of metadata
        // beside every WAV.
        if entry
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if is_folder {
            wavs_under(&entry, out)?;
        } else if entry
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// The machine the nearest `manifest.csv` listing the file names for it: in the file's folder or
/// any folder above it, as datasets keep one manifest at their root.
fn listed_machine(listings: &mut Listings, path: &Path) -> anyhow::Result<Option<MachineKey>> {
    Ok(listings.listing_of(path)?.map(|row| MachineKey {
        machine_type: row.machine_type,
        machine_id: row.machine_id,
    }))
}

fn known_machines(detector: &auscult_model::Detector) -> String {
    use auscult_model::profile::ANY;
    let known: Vec<String> = detector
        .info
        .profiles
        .iter()
        .map(|p| {
            if p.machine_id != ANY {
                p.key().to_string()
            } else if p.judges_any_machine() {
                format!("any {} (by its type's profile)", p.machine_type)
            } else {
                String::new()
            }
        })
        .filter(|known| !known.is_empty())
        .collect();
    if known.is_empty() {
        "no machine".into()
    } else {
        known.join(", ")
    }
}

fn json(path: &Path, a: &Assessment, version: &str) -> serde_json::Value {
    serde_json::json!({
        // A file name that is not UTF-8 is shown as near as it can be, never refused.
        "file": path.to_string_lossy(),
        "verdict": a.verdict,
        "class": a.class,
        "class_probability": round(f64::from(a.class_probability), 4),
        "anomaly_score": round(a.anomaly_score, 3),
        "threshold": round(a.threshold, 3),
        "machine": a.profile.to_string(),
        "profile_scope": a.scope,
        "detector": a.detector,
        "windows": a.window_scores.len(),
        "parts": a.parts.map(|p| serde_json::json!({
            "windows": p.windows.map(|v| round(v, 3)),
            "band_spectrum": p.band_spectrum.map(|v| round(v, 3)),
            "band_peaks": p.band_peaks.map(|v| round(v, 3)),
            "impulsiveness": p.impulsiveness.map(|v| round(v, 3)),
            "impulsiveness_side": p.impulsiveness_side,
        })),
        "top_bands": a.top_bands.iter().map(|b| serde_json::json!({
            "low_hz": b.low_hz.round(),
            "high_hz": b.high_hz.round(),
            "measure": b.measure,
            "departure_db": round(f64::from(b.departure_db), 2),
            "z": round(f64::from(b.z), 2),
        })).collect::<Vec<_>>(),
        "model_version": version,
    })
}

fn print(path: &Path, a: &Assessment) {
    println!(
        "{}: {:?} — score {:.3} vs threshold {:.3} ({} profile {}, {} windows); sounds like {} ({:.0} %)",
        recordings::shown(path),
        a.verdict,
        a.anomaly_score,
        a.threshold,
        match a.scope {
            auscult_model::profile::Scope::Machine => "machine",
            auscult_model::profile::Scope::MachineType => "machine-type",
            auscult_model::profile::Scope::Global => "global",
        },
        a.profile,
        a.window_scores.len(),
        a.class,
        a.class_probability * 100.0
    );
    if let Some(parts) = a.parts {
        let named = [
            ("windows", parts.windows),
            ("band spectrum", parts.band_spectrum),
            ("band peaks", parts.band_peaks),
            ("impulsiveness", parts.impulsiveness),
        ];
        let side = parts
            .impulsiveness_side
            .map_or(String::new(), |s| format!(" ({} than normal)", s.as_str()));
        let shown: Vec<String> = named
            .iter()
            .filter_map(|(name, part)| {
                let side = if *name == "impulsiveness" {
                    side.as_str()
                } else {
                    ""
                };
                part.map(|p| format!("{name} {p:.3}{side}"))
            })
            .collect();
        println!("    parts: {}", shown.join(", "));
    }
    for band in &a.top_bands {
        println!(
            "    {:>5.0}–{:<5.0} Hz  {} {:+.1} dB ({:+.1} σ)",
            band.low_hz,
            band.high_hz,
            match band.measure {
                auscult_model::assessment::Measure::Mean => "mean",
                auscult_model::assessment::Measure::Peak => "peak",
            },
            band.departure_db,
            band.z
        );
    }
}
