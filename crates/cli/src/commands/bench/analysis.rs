//! `auscult bench analysis`: what one window of sound costs to analyse on this machine.

use std::time::Instant;

use auscult_model::network::{Network, NetworkConfig};
use auscult_signal::{BANDS, FRAMES, MelSpectrogram, SpectrogramConfig, WINDOW_VALUES};
use burn::module::Module;
use burn::prelude::*;

use crate::commands::recordings::round;

/// PyTorch 2.15 on the same architecture, 2 CPU threads, measured on this kind of machine
/// (2 cores, no GPU): ms per window at batch 1 and at batch 32.
const PYTORCH_MS_BATCH1: f64 = 5.3;
const PYTORCH_MS_BATCH32: f64 = 3.4;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Network to time: `reference` (32-64-128 channels, 3×1024 units, 18 classes — the design
    /// PyTorch's figures are for) or `shipped` (the default model's).
    #[arg(long, default_value = "reference", value_parser = ["reference", "shipped"])]
    architecture: String,
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must lie between 0 and 600"
    );
    let config = match args.architecture.as_str() {
        "shipped" => {
            let bytes = auscult_model::shipped::bytes()
                .ok_or_else(|| anyhow::anyhow!("this build has no default model"))?;
            auscult_model::Detector::from_bytes(bytes, &auscult_model::default_device())?
                .info
                .network
                .clone()
        }
        _ => NetworkConfig::reference(),
    };
    let say = |message: String| {
        if !args.json {
            eprintln!("{message}");
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    say(format!(
        "timing the {} network ({} parameters-worth of layers, {:.0} MFLOP per window) on {cores} cores…",
        args.architecture,
        config
            .channels
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        config.flops_per_window() as f64 / 1e6
    ));

    let spectrogram_us = time_spectrogram(args.seconds.min(1.0)) * 1e6;
    say(format!("spectrogram: {spectrogram_us:.0} µs per window"));

    let device = auscult_model::default_device();
    let network = config.init(&device).valid();
    let input = |batch: usize| {
        let values: Vec<f32> = (0..batch * WINDOW_VALUES)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, [batch, 1, FRAMES, BANDS]), &device)
    };
    let batch1 = time_forward(&network, &input(1), 1, args.seconds) * 1e3;
    say(format!("CNN, batch 1: {batch1:.2} ms per window"));
    let batch32 = time_forward(&network, &input(32), 32, args.seconds) * 1e3;
    say(format!("CNN, batch 32: {batch32:.2} ms per window"));

    // Throughput: one batch-32 stream per core, against the single stream burn parallelises itself.
    let parallel = throughput(&config, cores, args.seconds)?;
    let windows_per_s = parallel.max(1e3 / batch32);
    let flops = config.flops_per_window() as f64;
    let gflops_achieved = windows_per_s * flops / 1e9;
    say(format!(
        "all cores: {windows_per_s:.0} windows/s, {gflops_achieved:.1} GFLOP/s achieved"
    ));
    let json = serde_json::json!({
        "architecture": args.architecture,
        "spectrogram_us": round(spectrogram_us, 1),
        "cnn_ms_batch1": round(batch1, 3),
        "cnn_ms_batch32": round(batch32, 3),
        "windows_per_s": round(windows_per_s, 1),
        "flops_per_window": config.flops_per_window(),
        "gflops_achieved": round(gflops_achieved, 2),
        "cores": cores,
        "backend": "burn flex",
        "pytorch_ms_batch1": PYTORCH_MS_BATCH1,
        "pytorch_ms_batch32": PYTORCH_MS_BATCH32,
        "speed_vs_pytorch_batch1": (args.architecture == "reference").then(|| round(PYTORCH_MS_BATCH1 / batch1, 3)),
        "speed_vs_pytorch_batch32": (args.architecture == "reference").then(|| round(PYTORCH_MS_BATCH32 / batch32, 3)),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if args.architecture == "reference" {
        println!(
            "burn flex runs at {:.2}× PyTorch's CPU speed at batch 1 and {:.2}× at batch 32 (above 1 is faster)",
            PYTORCH_MS_BATCH1 / batch1,
            PYTORCH_MS_BATCH32 / batch32
        );
    }
    Ok(())
}

/// Seconds per window of the log-mel spectrogram.
fn time_spectrogram(seconds: f64) -> f64 {
    let Ok(mut mel) = MelSpectrogram::new(SpectrogramConfig::default()) else {
        return f64::NAN;
    };
    let samples: Vec<f32> = (0..16_000)
        .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let mut out = vec![0.0; WINDOW_VALUES];
    let started = Instant::now();
    let mut runs = 0_u64;
    while runs < 100 || started.elapsed().as_secs_f64() < seconds {
        let _ = mel.window_into(&samples, &mut out);
        runs += 1;
    }
    started.elapsed().as_secs_f64() / runs as f64
}

/// Seconds per window of a forward pass over `input` (`batch` windows).
fn time_forward(network: &Network, input: &Tensor<4>, batch: usize, seconds: f64) -> f64 {
    for _ in 0..3 {
        let _ = auscult_model::detector::to_vec(network.forward(input.clone()).logits);
    }
    let started = Instant::now();
    let mut runs = 0_u64;
    while runs < 5 || started.elapsed().as_secs_f64() < seconds {
        let _ = auscult_model::detector::to_vec(network.forward(input.clone()).logits);
        runs += 1;
    }
    started.elapsed().as_secs_f64() / (runs as f64 * batch as f64)
}

/// Windows per second with one batch-32 stream per core.
fn throughput(config: &NetworkConfig, streams: usize, seconds: f64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let windows: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|_| {
                scope.spawn(|| {
                    let device = auscult_model::default_device();
                    let network = config.init(&device).valid();
                    let values = vec![0.1_f32; 32 * WINDOW_VALUES];
                    let input = Tensor::<4>::from_data(
                        TensorData::new(values, [32, 1, FRAMES, BANDS]),
                        &device,
                    );
                    let mut done = 0_u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        let _ =
                            auscult_model::detector::to_vec(network.forward(input.clone()).logits);
                        done += 32;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    Ok(windows as f64 / started.elapsed().as_secs_f64())
}
