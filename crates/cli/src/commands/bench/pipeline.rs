//! `auscult bench pipeline`: the whole stack on this machine, measured from frame stored to verdict
//! stored. First at a steady load (sensors × rate for some seconds): the latency operators feel.
//! Then a burst far above any steady load: how fast the backlog drains is the highest rate this
//! machine scores without a backlog growing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use auscult_gateway::{Gateway, GatewayConfig, Identity, SyntheticSource};
use serde_json::json;

use crate::commands::simulate::round3;
use crate::local_stack::{self, LocalStack, StackPlan};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sensors streaming at the steady load.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    sensors: u64,
    /// Frames per second from each sensor.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Frames in the burst that measures capacity.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    burst: u64,
    /// Analysis replicas (they share this machine's cores).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    analysis_replicas: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 100.0) {
        anyhow::bail!(
            "--rate must be above 0 and at most 100 frames per second, got {}",
            args.rate
        );
    }
    let quiet = args.json;
    let say = |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let mut stack = LocalStack::start(
        &StackPlan {
            analysis_replicas: usize::try_from(args.analysis_replicas).unwrap_or(1),
            listener_replicas: 1,
            listener_env: Vec::new(),
            // The simulated gateway is one device for all its sensors, and the burst measures analysis,
            // not that device's fair share of ingest.
            ingest_env: vec![
                ("AUSCULT__DEVICES__MAX_FRAMES_PER_SECOND".into(), "0".into()),
                ("AUSCULT__DEVICES__MAX_BYTES_PER_SECOND".into(), "0".into()),
            ],
        },
        say,
    )
    .await?;
    let measured = measure(&args, &stack, say).await;
    stack.stop();
    let figures = measured?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        println!(
            "steady load {} frames/s ({} sensors × {} frames/s for {} s): stored → scored p50 {} ms, p99 {} ms",
            figures["load_frames_per_s"],
            args.sensors,
            args.rate,
            args.seconds,
            figures["latency_p50_ms"],
            figures["latency_p99_ms"]
        );
        println!(
            "capacity: a burst of {} frames drained at {} frames/s (the highest sustained rate without a growing backlog)",
            args.burst, figures["max_sustained_frames_per_s"]
        );
    }
    Ok(())
}

async fn measure(
    args: &Args,
    stack: &LocalStack,
    say: impl Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    let mut client = crate::database::connect(&stack.database_url).await?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();

    // Steady load.
    let steady = format!("bench-steady-{stamp}");
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let frames_per_sensor = ((args.rate * args.seconds as f64).round() as u64).max(1);
    say(&format!(
        "steady load: {} sensors × {} frames/s for {} s",
        args.sensors, args.rate, args.seconds
    ));
    let summary = stream(
        stack,
        &mut client,
        &steady,
        args.sensors,
        frames_per_sensor,
        Some(args.rate * args.sensors as f64),
    )
    .await?;
    wait_settled(&client).await?;
    let latency = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_from_storage_ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_from_storage_ms),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_from_capture_ms),
                    count(*)
             FROM analysis_results WHERE device_id = $1",
            &[&steady],
        )
        .await?;

    // Burst.
    let burst = format!("bench-burst-{stamp}");
    let sensors = args.sensors.clamp(1, args.burst);
    say(&format!(
        "burst: {} frames as fast as ingest takes them",
        args.burst
    ));
    stream(
        stack,
        &mut client,
        &burst,
        sensors,
        args.burst.div_ceil(sensors),
        None,
    )
    .await?;
    wait_settled(&client).await?;
    let drained = client
        .query_one(
            "SELECT count(*)::float8 / greatest(extract(epoch FROM max(scored_at) - min(stored_at)), 0.001)
             FROM analysis_results WHERE device_id = $1",
            &[&burst],
        )
        .await?;

    let ms = |v: Option<f64>| v.map(round3);
    Ok(json!({
        "load_frames_per_s": round3(summary.frames_per_s()),
        "latency_p50_ms": ms(latency.get(0)),
        "latency_p99_ms": ms(latency.get(1)),
        "latency_from_capture_p50_ms": ms(latency.get(2)),
        "scored_at_load": latency.get::<_, i64>(3),
        "max_sustained_frames_per_s": round3(drained.get::<_, f64>(0)),
        "sensors": args.sensors,
        "seconds": args.seconds,
        "burst_frames": args.burst,
        "analysis_replicas": args.analysis_replicas,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
    }))
}

async fn stream(
    stack: &LocalStack,
    client: &mut tokio_postgres::Client,
    device: &str,
    sensors: u64,
    frames_per_sensor: u64,
    rate: Option<f64>,
) -> anyhow::Result<auscult_gateway::Summary> {
    let token = auscult_store::add_device(client, device, "auscult bench pipeline").await?;
    let mut config = GatewayConfig::new(stack.ingest_endpoint.clone(), token);
    config.rate = rate;
    let identity = Identity {
        device_id: device.to_owned(),
        sensors: (0..sensors).map(|i| format!("mic-{i}")).collect(),
        stream_epoch: 1,
    };
    Gateway::new(config)
        .run(SyntheticSource::new(identity, frames_per_sensor, 7))
        .await
        .context("streaming to ingest")
}

async fn wait_settled(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    if local_stack::wait_settled(client, Duration::from_secs(900)).await {
        Ok(())
    } else {
        anyhow::bail!("frames were still waiting for analysis after 15 minutes")
    }
}
