//! `auscult simulate`: one gateway device with N sensors, streaming to ingest.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use auscult_gateway::{
    FrameSource, Gateway, GatewayConfig, Identity, Progress, Summary, SyntheticSource, WavSource,
};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ingest's gRPC address; several, comma-separated, when there is no load balancer in front of
    /// the ingest replicas (a broken connection moves on to the next).
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "AUSCULT_ENDPOINT",
        value_delimiter = ','
    )]
    endpoint: Vec<String>,
    /// The device's bearer token (from `auscult device add`).
    #[arg(
        long,
        env = "AUSCULT_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the device's token (as `auscult device add --token-file` writes it).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Device id; must be the token's device.
    #[arg(long)]
    device: String,
    /// Number of sensors (microphones) on the device; they are named mic-0, mic-1, …
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sensors: u32,
    /// Frames per sensor.
    #[arg(long, default_value_t = 60)]
    frames: u64,
    /// Frames per second per sensor; 0 sends as fast as ingest accepts.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of audio per frame.
    #[arg(long, default_value_t = 1.0)]
    frame_seconds: f64,
    /// WAV files or folders to cut frames from; without it, a synthetic signal.
    #[arg(long, num_args = 1..)]
    wav: Vec<PathBuf>,
    /// Stream epoch; defaults to the current Unix time, as a rebooting gateway would pick.
    #[arg(long)]
    epoch: Option<u64>,
    /// Seed of the synthetic signal.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Drop the connection every K new frames (and resend what was not acknowledged).
    #[arg(long)]
    cut_every: Option<u64>,
    /// Give up after this many seconds without an answer from ingest.
    #[arg(long, default_value_t = 60.0)]
    give_up_after: f64,
    /// Abandon a stream (for the next ingest address) when frames wait this many seconds unanswered.
    #[arg(long, default_value_t = 30.0)]
    progress_timeout: f64,
    /// Most unacknowledged frames in flight.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// CA certificate (PEM) to verify ingest's TLS certificate; implies TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a finite number ≥ 0, got {}", args.rate);
    }
    if !(0.01..=60.0).contains(&args.frame_seconds) {
        anyhow::bail!(
            "--frame-seconds must be between 0.01 and 60, got {}",
            args.frame_seconds
        );
    }
    let identity = Identity {
        device_id: args.device.clone(),
        sensors: (0..args.sensors).map(|i| format!("mic-{i}")).collect(),
        stream_epoch: args.epoch.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        }),
    };
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!("give the device's token with --token or --token-file"),
    };
    let mut config = GatewayConfig::new(String::new(), token);
    config.endpoints.clone_from(&args.endpoint);
    config.window = args.window.max(1);
    config.cut_every = args.cut_every;
    config.rate = (args.rate > 0.0).then(|| args.rate * f64::from(args.sensors));
    config.tls = tls_config(&args)?;
    if !(args.give_up_after > 0.0 && args.give_up_after.is_finite()) {
        anyhow::bail!(
            "--give-up-after must be a positive number of seconds, got {}",
            args.give_up_after
        );
    }
    config.give_up_after = Duration::from_secs_f64(args.give_up_after);
    if !(args.progress_timeout > 0.0 && args.progress_timeout.is_finite()) {
        anyhow::bail!(
            "--progress-timeout must be a positive number of seconds, got {}",
            args.progress_timeout
        );
    }
    config.progress_timeout = Duration::from_secs_f64(args.progress_timeout);
    let gateway = Gateway::new(config);
    let progress = gateway.progress();

    let summary = if args.wav.is_empty() {
        let mut source = SyntheticSource::new(identity, args.frames, args.seed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let samples = (16_000.0 * args.frame_seconds).round() as usize;
        source.samples_per_frame = samples.max(1);
        drive(&gateway, source, &progress, args.json).await?
    } else {
        let source = WavSource::new(identity, &args.wav, args.frames, args.frame_seconds)?;
        drive(&gateway, source, &progress, args.json).await?
    };
    report(&summary, args.json)
}

/// Runs the gateway with a progress bar on stderr (hidden when stderr is not a terminal).
async fn drive(
    gateway: &Gateway,
    source: impl FrameSource,
    progress: &Arc<Progress>,
    quiet: bool,
) -> anyhow::Result<Summary> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(source.total())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} acked {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), Arc::clone(progress));
        tokio::spawn(async move {
            loop {
                let acked = progress.acked.load(Ordering::Relaxed);
                let rejected = progress.rejected.load(Ordering::Relaxed);
                bar.set_position(acked + rejected);
                bar.set_message(format!(
                    "(sent {}, rejected {rejected}, resent {})",
                    progress.sent.load(Ordering::Relaxed),
                    progress.resent.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = gateway.run(source).await;
    ticker.abort();
    bar.finish_and_clear();
    result.context("streaming to ingest")
}

fn report(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let elapsed_s = summary.elapsed.as_secs_f64();
    if json {
        let out = serde_json::json!({
            "sent": summary.sent,
            "acked": summary.acked,
            "rejected": summary.rejected,
            "resent": summary.resent,
            "duplicates": summary.duplicates,
            "reconnects": summary.reconnects,
            "elapsed_s": round3(elapsed_s),
            "frames_per_s": round3(summary.frames_per_s()),
            "ack_p50_ms": round3(summary.ack_p50.as_secs_f64() * 1e3),
            "ack_p99_ms": round3(summary.ack_p99.as_secs_f64() * 1e3),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "sent {} frames in {elapsed_s:.1} s ({:.0} frames/s): {} acknowledged, {} rejected, {} resent over {} reconnects; ack latency p50 {:.1} ms, p99 {:.1} ms",
            summary.sent,
            summary.frames_per_s(),
            summary.acked,
            summary.rejected,
            summary.resent,
            summary.reconnects,
            summary.ack_p50.as_secs_f64() * 1e3,
            summary.ack_p99.as_secs_f64() * 1e3,
        );
        for rejection in summary.rejections.iter().take(10) {
            println!(
                "  rejected {} seq {}: {}",
                rejection.sensor_id, rejection.seq, rejection.detail
            );
        }
    }
    Ok(())
}

fn tls_config(args: &Args) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &args.ca else {
        if args.cert.is_some() {
            anyhow::bail!("--cert needs --ca (mutual TLS runs over TLS)");
        }
        return Ok(None);
    };
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
