//! `auscult bench …`: measurements that print their figures.

use std::{
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use anyhow::Context;
use auscult_frame::Frame;
use auscult_gateway::{Gateway, GatewayConfig, Identity, PreparedSource, SyntheticSource};
use auscult_testkit::PostgresServer;
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{commands::simulate::round3, database};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Stream one-second 16 kHz PCM16 frames through the ingest service and compare with a binary COPY of the
    /// same rows into the same PostgreSQL (the ceiling). Uses DATABASE_URL (its bench rows are deleted
    /// afterwards) or starts a throwaway PostgreSQL.
    Ingest(IngestArgs),
    /// Time the analysis path on this machine: spectrogram, CNN at batch 1 and 32, throughput on all
    /// cores, and the ratio to PyTorch's CPU speed on the same architecture.
    Analysis(analysis::Args),
    /// Run the whole stack on this machine and measure latency from frame stored to verdict stored at a
    /// steady load, and the highest rate it scores without a growing backlog. Uses DATABASE_URL or starts a
    /// throwaway PostgreSQL.
    Pipeline(pipeline::Args),
    /// Day 30: measure ingest, fill PostgreSQL with tens of GB of frames across a month of partitions,
    /// measure again, prune to the retention policy, measure twice more; sizes and dead rows at each step.
    /// Uses DATABASE_URL (it adds a month of frames to it) or starts a throwaway PostgreSQL.
    Soak(soak::Args),
}

mod analysis;
mod pipeline;
mod soak;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Frames to send in all.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    frames: u64,
    /// Concurrent gateway streams (one device each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    streams: u64,
    /// Sensors per gateway.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    sensors: u64,
    /// Unacknowledged frames each gateway keeps in flight.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    window: u64,
    /// PostgreSQL to measure; without it a throwaway cluster is started.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ingest(args) => ingest(args).await,
        Command::Analysis(args) => tokio::task::spawn_blocking(move || analysis::run(args)).await?,
        Command::Pipeline(args) => pipeline::run(args).await,
        Command::Soak(args) => soak::run(args).await,
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let say = |message: &str| {
        if !args.json {
            eprintln!("{message}");
        }
    };
    let (_server, url) = bench_database(args.database_url.as_deref(), &say).await?;
    let mut client = database::connect(&url).await?;
    auscult_store::migrate(&mut client)
        .await
        .context("migrating the bench database")?;
    let load = IngestLoad {
        frames: args.frames,
        streams: args.streams,
        sensors: args.sensors,
        window: args.window,
        keep_rows: false,
    };
    let figures = measure_ingest(&url, &load, &say).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures.to_json())?);
    } else {
        println!(
            "ingest: {:.0} frames/s ({:.1} MB/s), {} persisted, {} duplicates, ack latency p50 {:.1} ms, p99 {:.1} ms",
            figures.frames_per_s,
            figures.mb_per_s,
            figures.persisted,
            figures.duplicates,
            figures.ack_p50_ms,
            figures.ack_p99_ms
        );
        println!(
            "binary COPY ceiling: {:.0} frames/s ({:.1} MB/s)",
            figures.copy_frames_per_s, figures.copy_mb_per_s
        );
        println!("ratio to COPY: {:.2}", figures.ratio_to_copy);
    }
    Ok(())
}

/// `url`, or a throwaway PostgreSQL (kept alive by the returned server) when there is none.
async fn bench_database(
    url: Option<&str>,
    say: &impl Fn(&str),
) -> anyhow::Result<(Option<PostgresServer>, String)> {
    Ok(match url {
        Some(url) => (None, url.to_owned()),
        None => {
            say("starting a throwaway PostgreSQL (fsync on)…");
            let server = tokio::task::spawn_blocking(PostgresServer::start).await??;
            let url = server.url();
            (Some(server), url)
        }
    })
}

/// The load of one ingest measurement.
struct IngestLoad {
    frames: u64,
    streams: u64,
    sensors: u64,
    window: u64,
    /// Leave the streamed frames in the database (the soak keeps them as data); otherwise they are deleted.
    keep_rows: bool,
}

/// What one ingest measurement found.
struct IngestFigures {
    frames: u64,
    persisted: i64,
    duplicates: i64,
    duplicates_acked: u64,
    streams: u64,
    elapsed_s: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    copy_frames_per_s: f64,
    copy_mb_per_s: f64,
    ratio_to_copy: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
}

impl IngestFigures {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "frames": self.frames,
            "persisted": self.persisted,
            "duplicates": self.duplicates,
            "duplicates_acked": self.duplicates_acked,
            "streams": self.streams,
            "elapsed_s": round3(self.elapsed_s),
            "frames_per_s": round3(self.frames_per_s),
            "mb_per_s": round3(self.mb_per_s),
            "copy_frames_per_s": round3(self.copy_frames_per_s),
            "copy_mb_per_s": round3(self.copy_mb_per_s),
            "ratio_to_copy": round3(self.ratio_to_copy),
            "ack_p50_ms": round3(self.ack_p50_ms),
            "ack_p99_ms": round3(self.ack_p99_ms),
        })
    }
}

/// Streams `load.frames` one-second frames through an in-process ingest on `url`, then binary-COPYs the
/// same rows into a table shaped like `frames` in the same database (the ceiling).
async fn measure_ingest(
    url: &str,
    load: &IngestLoad,
    say: &impl Fn(&str),
) -> anyhow::Result<IngestFigures> {
    let mut client = database::connect(url).await?;
    // Devices and frames, prepared before anything is timed.
    let run_id = format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos()
    );
    let per_stream = load.frames.div_ceil(load.streams);
    let mut gateways = Vec::new();
    let mut all_frames = Vec::new();
    let mut remaining = load.frames;
    for g in 0..load.streams {
        let device_id = format!("{run_id}-{g}");
        let token = auscult_store::add_device(&mut client, &device_id, "benchmark").await?;
        let count = per_stream.min(remaining);
        remaining -= count;
        let identity = Identity {
            device_id: device_id.clone(),
            sensors: (0..load.sensors).map(|s| format!("mic-{s}")).collect(),
            stream_epoch: 1,
        };
        let source = SyntheticSource::new(identity, count.div_ceil(load.sensors), g);
        let mut prepared = PreparedSource::drain(source)?;
        prepared.truncate(usize::try_from(count)?);
        all_frames.extend(prepared.frames().cloned());
        gateways.push((device_id, token, prepared));
    }
    let device_ids: Vec<String> = gateways.iter().map(|(d, _, _)| d.clone()).collect();
    let bytes: u64 = all_frames.iter().map(|f| f.samples.len() as u64).sum();

    // Ingest, in process, on a free port.
    let shutdown = CancellationToken::new();
    let grpc = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let endpoint = format!("http://{}", grpc.local_addr()?);
    let admin = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    // AUSCULT__* variables tune the service under test exactly as they tune a deployed one.
    let mut settings = auscult_ingest::Settings::load(None).context("loading ingest settings")?;
    settings.database.url = url.to_owned();
    // The benchmark runs lifecycle passes itself, where it measures them.
    settings.lifecycle.enabled = false;
    // Its load is one device on many streams at full speed: what is measured is the path to the database,
    // not that device's fair share of ingest.
    settings.devices.max_frames_per_second = 0;
    settings.devices.max_bytes_per_second = 0;
    settings.devices.max_streams = settings
        .devices
        .max_streams
        .max(u32::try_from(load.streams).unwrap_or(u32::MAX));
    let compress = settings.storage.audio == auscult_ingest::AudioStorage::Flac;
    let service = tokio::spawn(auscult_ingest::run(
        settings,
        auscult_ingest::Listeners { grpc, admin },
        shutdown.clone(),
    ));
    wait_until_serving(&endpoint).await?;

    checkpoint(&client).await;
    say(&format!(
        "streaming {} frames ({:.0} MB) through ingest over {} streams…",
        load.frames,
        mb(bytes),
        load.streams
    ));
    let started = Instant::now();
    let mut runs = Vec::new();
    for (_, token, source) in gateways {
        let mut config = GatewayConfig::new(endpoint.clone(), token);
        config.window = usize::try_from(load.window)?;
        let gateway = Gateway::new(config);
        runs.push(tokio::spawn(async move { gateway.run(source).await }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut acked = 0;
    let mut duplicates_acked = 0;
    for run in runs {
        let summary = run.await??;
        acked += summary.acked;
        duplicates_acked += summary.duplicates;
        latencies.add(&summary.ack_latency_us)?;
    }
    let ingest_elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    service.await?.context("ingest service")?;

    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (device_id, sensor_id, stream_epoch, seq)) FROM frames WHERE device_id = ANY($1)",
            &[&device_ids],
        )
        .await?;
    let (persisted, distinct): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);

    // The ceiling: the same rows as stored (compressed before the clock starts, when ingest compresses),
    // binary COPY, into a table shaped like `frames` in the same database.
    let mut rows: Vec<Frame> = all_frames
        .into_iter()
        .map(|f| {
            auscult_proto::to_raw_frame(f)
                .validate(&auscult_frame::Limits::default(), SystemTime::now())
        })
        .collect::<Result<_, _>>()?;
    if compress {
        for row in &mut rows {
            row.compress_for_storage()?;
        }
    }
    let table = format!("bench_copy_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (LIKE frames INCLUDING ALL)"
        ))
        .await?;
    checkpoint(&client).await;
    say("copying the same rows with binary COPY…");
    let started = Instant::now();
    let tx = client.transaction().await?;
    let refs: Vec<&Frame> = rows.iter().collect();
    auscult_store::copy_frames(&tx, &table, &refs, None, SystemTime::now()).await?;
    tx.commit().await?;
    let copy_elapsed = started.elapsed().as_secs_f64();

    // Leave a shared database as it was.
    client.batch_execute(&format!("DROP TABLE {table}")).await?;
    if !load.keep_rows {
        client
            .execute(
                "DELETE FROM search_outbox WHERE kind = 'frame' AND ref_id IN (SELECT id FROM frames WHERE device_id = ANY($1))",
                &[&device_ids],
            )
            .await?;
        client
            .execute(
                "DELETE FROM analysis_jobs WHERE frame_id IN (SELECT id FROM frames WHERE device_id = ANY($1))",
                &[&device_ids],
            )
            .await?;
        client
            .execute(
                "DELETE FROM frames WHERE device_id = ANY($1)",
                &[&device_ids],
            )
            .await?;
        client
            .execute(
                "DELETE FROM devices WHERE device_id = ANY($1)",
                &[&device_ids],
            )
            .await?;
    }

    #[allow(clippy::cast_precision_loss)]
    let (frames_per_s, copy_frames_per_s) = (
        acked as f64 / ingest_elapsed,
        rows.len() as f64 / copy_elapsed,
    );
    Ok(IngestFigures {
        frames: load.frames,
        persisted,
        duplicates: persisted - distinct,
        duplicates_acked,
        streams: load.streams,
        elapsed_s: ingest_elapsed,
        frames_per_s,
        mb_per_s: mb(bytes) / ingest_elapsed,
        copy_frames_per_s,
        copy_mb_per_s: mb(bytes) / copy_elapsed,
        ratio_to_copy: frames_per_s / copy_frames_per_s,
        ack_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1e3,
        ack_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// Flushes dirty pages so that each phase starts from the same state; needs superuser, skipped otherwise.
async fn checkpoint(client: &tokio_postgres::Client) {
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        tracing::debug!("no checkpoint between phases: {e}");
    }
}

async fn wait_until_serving(endpoint: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?;
    let serving = auscult_testkit::wait_grpc_serving(
        &channel,
        "auscult.ingest.v1.Ingest",
        std::time::Duration::from_secs(30),
    )
    .await;
    anyhow::ensure!(serving, "ingest did not become ready within 30 s");
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let bytes = bytes as f64;
    bytes / 1e6
}
