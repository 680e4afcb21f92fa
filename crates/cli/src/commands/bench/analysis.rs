//! `auscult bench analysis`: what one window of sound costs to analyse on this machine — the
//! spectrogram, the network through the compiled path the service scores with and through burn's
//! own forward pass (the framework it is trained in), and one training step.
//!
//! Peer runtimes (PyTorch, ONNX Runtime) are timed side by side by `bench/peers/compare.py`,
//! which runs this command with `--json` in the same run on the same machine.

use std::time::Instant;

use auscult_inference::CompiledNetwork;
use auscult_model::network::{Network, NetworkConfig};
use auscult_model::train::adam::FusedAdam;
use auscult_signal::{BANDS, FRAMES, MelSpectrogram, SpectrogramConfig, WINDOW_VALUES};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::commands::recordings::round;

/// Windows per timed training step (`auscult train` defaults to 32; the peers script times 16).
const TRAIN_BATCH: usize = 16;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Network to time: `reference` (32-64-128 channels, 3×1024 units, 18 classes — the design
    /// peers are compared on) or `shipped` (the default model's).
    #[arg(long, default_value = "reference", value_parser = ["reference", "shipped"])]
    architecture: String,
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Skip timing burn's forward pass and training step (the slow part of this benchmark).
    #[arg(long)]
    skip_burn: bool,
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
    let threads = rayon::current_num_threads();
    let flops = config.flops_per_window() as f64;
    say(format!(
        "timing the {} network ({} channels, {:.0} MFLOP per window) on {threads} threads…",
        args.architecture,
        config
            .channels
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        flops / 1e6
    ));

    let spectrogram_us = time_spectrogram(args.seconds.min(1.0)) * 1e6;
    say(format!("spectrogram: {spectrogram_us:.0} µs per window"));

    let device = auscult_model::default_device();
    // Weights as a model file holds them, as the service would load them.
    let network = config.init(&device).valid().as_stored();
    let compiled = network.compile(None)?;
    let batch1 = time_compiled(&compiled, 1, args.seconds)? * 1e3;
    say(format!("CNN, batch 1: {batch1:.3} ms per window"));
    let batch32 = time_compiled(&compiled, 32, args.seconds)? * 1e3;
    say(format!(
        "CNN, batch 32: {batch32:.3} ms per window ({:.0} GFLOP/s)",
        flops / batch32 / 1e6
    ));
    // Scoring threads each send their own batches; the shared thread pool splits them.
    let windows_per_s = throughput(&compiled, threads, args.seconds)?.max(1e3 / batch32);
    let gflops_achieved = windows_per_s * flops / 1e9;
    say(format!(
        "all threads: {windows_per_s:.0} windows/s, {gflops_achieved:.1} GFLOP/s achieved"
    ));

    let mut json = serde_json::json!({
        "architecture": args.architecture,
        "spectrogram_us": round(spectrogram_us, 1),
        "cnn_ms_batch1": round(batch1, 3),
        "cnn_ms_batch32": round(batch32, 3),
        "windows_per_s": round(windows_per_s, 1),
        "flops_per_window": config.flops_per_window(),
        "gflops_achieved": round(gflops_achieved, 2),
        "threads": threads,
        "backend": "auscult compiled (gemm)",
    });
    if !args.skip_burn {
        let burn1 = time_burn(&network, 1, args.seconds) * 1e3;
        let burn32 = time_burn(&network, 32, args.seconds) * 1e3;
        say(format!(
            "burn's own forward pass: {burn1:.3} ms per window at batch 1, {burn32:.3} at batch 32"
        ));
        let step = time_training_step(&config, args.seconds)? * 1e3;
        say(format!(
            "training step (batch {TRAIN_BATCH}, Adam, burn autodiff): {step:.1} ms"
        ));
        json["burn_ms_batch1"] = round(burn1, 3).into();
        json["burn_ms_batch32"] = round(burn32, 3).into();
        json["speedup_vs_burn_batch1"] = round(burn1 / batch1, 2).into();
        json["speedup_vs_burn_batch32"] = round(burn32 / batch32, 2).into();
        json["train_step_ms_batch16"] = round(step, 1).into();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
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

/// Deterministic windows with the spread of normalised log-mel values.
fn windows(batch: usize) -> Vec<f32> {
    (0..batch * WINDOW_VALUES)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Seconds per window of the compiled forward pass at `batch` windows per call.
fn time_compiled(network: &CompiledNetwork, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let input = windows(batch);
    let (mut logits, mut embeddings) = (Vec::new(), Vec::new());
    let mut call = || {
        logits.clear();
        embeddings.clear();
        network.forward(&input, &mut logits, &mut embeddings)
    };
    for _ in 0..3 {
        call()?;
    }
    let started = Instant::now();
    let mut runs = 0_u64;
    while runs < 5 || started.elapsed().as_secs_f64() < seconds {
        call()?;
        runs += 1;
    }
    Ok(started.elapsed().as_secs_f64() / (runs as f64 * batch as f64))
}

/// Seconds per window of burn's forward pass over the same network.
fn time_burn(network: &Network, batch: usize, seconds: f64) -> f64 {
    let device = auscult_model::default_device();
    let input = Tensor::<4>::from_data(
        TensorData::new(windows(batch), [batch, 1, FRAMES, BANDS]),
        &device,
    );
    let call = || auscult_model::inference::to_vec(network.forward(input.clone()).logits);
    for _ in 0..3 {
        let _ = call();
    }
    let started = Instant::now();
    let mut runs = 0_u64;
    while runs < 5 || started.elapsed().as_secs_f64() < seconds {
        let _ = call();
        runs += 1;
    }
    started.elapsed().as_secs_f64() / (runs as f64 * batch as f64)
}

/// Seconds per training step as `auscult train` takes it: forward, cross-entropy, backward and
/// Adam on one batch.
fn time_training_step(config: &NetworkConfig, seconds: f64) -> anyhow::Result<f64> {
    let device = auscult_model::default_device().autodiff();
    let mut network = config.init(&device);
    let mut optimizer = ModuleOptimizer::from(FusedAdam::default());
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let input = Tensor::<4>::from_data(
        TensorData::new(windows(TRAIN_BATCH), [TRAIN_BATCH, 1, FRAMES, BANDS]),
        &device,
    );
    let labels: Vec<i64> = (0..TRAIN_BATCH as i64)
        .map(|i| i % config.classes as i64)
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [TRAIN_BATCH]), &device);
    let mut step = |network: Network| {
        let loss = loss_fn.forward(network.forward(input.clone()).logits, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &network);
        optimizer.step(1e-4, network, grads)
    };
    for _ in 0..2 {
        network = step(network);
    }
    let started = Instant::now();
    let mut runs = 0_u64;
    while runs < 3 || started.elapsed().as_secs_f64() < seconds {
        network = step(network);
        runs += 1;
    }
    // The last step's weights, so none of the work can be skipped.
    let _ = network.valid();
    Ok(started.elapsed().as_secs_f64() / runs as f64)
}

/// Windows per second with `streams` callers sending batches of 32 at once.
fn throughput(network: &CompiledNetwork, streams: usize, seconds: f64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|_| {
                scope.spawn(|| {
                    let input = windows(32);
                    let (mut logits, mut embeddings) = (Vec::new(), Vec::new());
                    let mut done = 0_u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        logits.clear();
                        embeddings.clear();
                        network.forward(&input, &mut logits, &mut embeddings)?;
                        done += 32;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a stream panicked")))
            })
            .collect()
    });
    let mut windows = 0;
    for result in results {
        windows += result?;
    }
    Ok(windows as f64 / started.elapsed().as_secs_f64())
}
