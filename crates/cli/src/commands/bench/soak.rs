//! `auscult bench soak`: does ingest keep its speed when PostgreSQL holds a month of audio, and after
//! retention has pruned it? Ingest measured at three steps, a few rounds each — on the database as found, after a fill of tens of GB
//! spread over a month of daily partitions, and after a lifecycle pass has dropped what the policy no longer
//! keeps — with table, index and dead-row sizes at each step.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_store::{PassOutcome, RetentionPolicy};
use bytes::Bytes;

use super::{IngestFigures, IngestLoad, bench_database, checkpoint, mb, measure_ingest};
use crate::{commands::simulate::round3, database};

const DAY: Duration = Duration::from_secs(86_400);
/// Frames per COPY during the fill (16 MB of audio).
const FILL_BATCH: usize = 500;
/// Sensors the fill writes for: a month of one sensor would be 2.6 M frames.
const FILL_SENSORS: usize = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Audio to fill the database with, in GB (10⁹ bytes of samples).
    #[arg(long, default_value_t = 20.0)]
    gigabytes: f64,
    /// Days of capture time the fill spans, one partition each; the default policy keeps the last 7.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(8..=90))]
    days: u32,
    /// Frames streamed through ingest in each measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    frames: u64,
    /// Measurements at each step; a step reports their median (one round's p99 on a shared disk moves by
    /// tens of percent from one round to the next).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: u64,
    /// Concurrent gateway streams in each measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    streams: u64,
    /// Concurrent COPY writers during the fill.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    fill_writers: u64,
    /// PostgreSQL to soak; without it a throwaway cluster is started (in the temporary directory: it needs
    /// the fill's size, twice over for WAL, free there).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// One step's figures: each round's, and the sizes after the last.
struct Step {
    name: &'static str,
    rounds: Vec<IngestFigures>,
    sizes: Sizes,
}

impl Step {
    /// The median of one figure over the rounds (the lower middle one for an even count).
    fn median(&self, figure: impl Fn(&IngestFigures) -> f64) -> f64 {
        let mut values: Vec<f64> = self.rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[(values.len() - 1) / 2]
    }

    /// The lowest and highest value of one figure over the rounds.
    fn range(&self, figure: impl Fn(&IngestFigures) -> f64) -> (f64, f64) {
        self.rounds
            .iter()
            .map(figure)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }

    fn to_json(&self) -> serde_json::Value {
        let (p99_low, p99_high) = self.range(|f| f.ack_p99_ms);
        let (rate_low, rate_high) = self.range(|f| f.frames_per_s);
        serde_json::json!({
            "step": self.name,
            "median": {
                "frames_per_s": round3(self.median(|f| f.frames_per_s)),
                "ratio_to_copy": round3(self.median(|f| f.ratio_to_copy)),
                "ack_p50_ms": round3(self.median(|f| f.ack_p50_ms)),
                "ack_p99_ms": round3(self.median(|f| f.ack_p99_ms)),
            },
            "range": {
                "frames_per_s": [round3(rate_low), round3(rate_high)],
                "ack_p99_ms": [round3(p99_low), round3(p99_high)],
            },
            "rounds": self.rounds.iter().map(IngestFigures::to_json).collect::<Vec<_>>(),
            "sizes": self.sizes.to_json(),
        })
    }
}

/// `rounds` ingest measurements in a row.
async fn measure_rounds(
    url: &str,
    load: &IngestLoad,
    rounds: u64,
    say: &impl Fn(&str),
) -> anyhow::Result<Vec<IngestFigures>> {
    let mut figures = Vec::new();
    for round in 1..=rounds {
        say(&format!("    round {round}/{rounds}"));
        figures.push(measure_ingest(url, load, say).await?);
    }
    Ok(figures)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.gigabytes > 0.0 && args.gigabytes <= 2_000.0,
        "--gigabytes must be between 0 and 2000"
    );
    let json = args.json;
    let say = |message: &str| {
        if !json {
            eprintln!("{message}");
        }
    };
    let (_server, url) = bench_database(args.database_url.as_deref(), &say).await?;
    let mut client = database::connect(&url).await?;
    auscult_store::migrate(&mut client)
        .await
        .context("migrating the soak database")?;
    let load = IngestLoad {
        frames: args.frames,
        streams: args.streams,
        sensors: 5,
        window: 256,
        keep_rows: true,
    };
    let mut steps = Vec::new();

    // A fresh cluster creates its WAL segments as it first fills them, which makes its first writes slower
    // than any later ones; one unreported round first, so the start is measured like the end.
    say("warming up (one unreported measurement)…");
    measure_ingest(&url, &load, &say).await?;

    say("1/5 measuring ingest on the database as it is…");
    let rounds = measure_rounds(&url, &load, args.rounds, &say).await?;
    steps.push(Step {
        name: "start",
        rounds,
        sizes: sizes(&client).await?,
    });

    // Partitions back to the start of the fill: a pass with a retention longer than the fill.
    let fill_policy = RetentionPolicy {
        raw_audio: DAY * (args.days + 1),
        kept_audio: DAY * (args.days + 1).max(90),
        ..RetentionPolicy::default()
    };
    let PassOutcome::Ran(_) =
        auscult_store::run_pass(&mut client, &fill_policy, SystemTime::now(), "bench soak").await?
    else {
        anyhow::bail!("a lifecycle pass is running against this database; stop ingest first");
    };
    say(&format!(
        "2/5 filling {:.1} GB of frames over {} days of capture time…",
        args.gigabytes, args.days
    ));
    let fill = fill(&url, &args, &say).await?;
    say(&format!(
        "    {} frames in {:.0} s ({:.0} MB/s)",
        fill.frames,
        fill.seconds,
        mb(fill.bytes) / fill.seconds
    ));

    say("3/5 measuring ingest on the full database…");
    let rounds = measure_rounds(&url, &load, args.rounds, &say).await?;
    steps.push(Step {
        name: "after the fill",
        rounds,
        sizes: sizes(&client).await?,
    });

    say("4/5 pruning to the default policy (a lifecycle pass)…");
    let policy = RetentionPolicy::default();
    let started = Instant::now();
    let PassOutcome::Ran(pass) =
        auscult_store::run_pass(&mut client, &policy, SystemTime::now(), "bench soak").await?
    else {
        anyhow::bail!("a lifecycle pass is running against this database; stop ingest first");
    };
    let prune_seconds = started.elapsed().as_secs_f64();
    checkpoint(&client).await;

    // The first round starts right after the drop, while the filesystem is still freeing what went.
    say("5/5 measuring ingest after pruning…");
    let rounds = measure_rounds(&url, &load, args.rounds, &say).await?;
    steps.push(Step {
        name: "after pruning",
        rounds,
        sizes: sizes(&client).await?,
    });

    let (first, last) = (&steps[0], &steps[steps.len() - 1]);
    let ratio_change = last.median(|f| f.ratio_to_copy) / first.median(|f| f.ratio_to_copy) - 1.0;
    let p99_change = last.median(|f| f.ack_p99_ms) / first.median(|f| f.ack_p99_ms) - 1.0;
    if json {
        let out = serde_json::json!({
            "fill": {
                "frames": fill.frames,
                "gigabytes": round3(fill.bytes as f64 / 1e9),
                "days": args.days,
                "seconds": round3(fill.seconds),
                "mb_per_s": round3(mb(fill.bytes) / fill.seconds),
            },
            "prune": {
                "seconds": round3(prune_seconds),
                "partitions_dropped": pass.partitions_dropped.len(),
                "bytes_freed": pass.bytes_freed(),
            },
            "rounds_per_step": args.rounds,
            "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
            "ratio_change": round3(ratio_change),
            "p99_change": round3(p99_change),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "fill: {} frames, {:.1} GB over {} daily partitions in {:.0} s ({:.0} MB/s); pruning: {} partitions, \
             {:.1} GB freed in {:.1} s",
            fill.frames,
            fill.bytes as f64 / 1e9,
            args.days,
            fill.seconds,
            mb(fill.bytes) / fill.seconds,
            pass.partitions_dropped.len(),
            pass.bytes_freed() as f64 / 1e9,
            prune_seconds
        );
        println!(
            "medians of {} rounds per step (range in brackets)",
            args.rounds
        );
        println!(
            "| step | frames stored | frames table | its indexes | dead rows | partitions | ingest frames/s | ratio to COPY | ack p50 ms | ack p99 ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for s in &steps {
            let (rate_low, rate_high) = s.range(|f| f.frames_per_s);
            let (p99_low, p99_high) = s.range(|f| f.ack_p99_ms);
            println!(
                "| {} | {} | {:.2} GB | {:.0} MB | {} | {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.1} | {:.1} ({:.0}–{:.0}) |",
                s.name,
                s.sizes.frames,
                s.sizes.table_bytes as f64 / 1e9,
                s.sizes.index_bytes as f64 / 1e6,
                s.sizes.dead_rows,
                s.sizes.partitions,
                s.median(|f| f.frames_per_s),
                rate_low,
                rate_high,
                s.median(|f| f.ratio_to_copy),
                s.median(|f| f.ack_p50_ms),
                s.median(|f| f.ack_p99_ms),
                p99_low,
                p99_high
            );
        }
        println!(
            "end against start: ratio to COPY {:+.1} %, ack p99 {:+.1} %",
            ratio_change * 100.0,
            p99_change * 100.0
        );
    }
    Ok(())
}

struct Filled {
    frames: u64,
    bytes: u64,
    seconds: f64,
}

/// COPYs one-second frames spread evenly over the last `args.days` days into `frames` (routed to their
/// partitions by capture time), from `fill_writers` connections at once. The audio is noise (it does not
/// compress, like real machine sound) from a few distinct buffers; keys are unique.
async fn fill(url: &str, args: &Args, say: &impl Fn(&str)) -> anyhow::Result<Filled> {
    let total = (args.gigabytes * 1e9 / 32_000.0).ceil() as u64;
    let device_id = format!(
        "soak-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs()
    );
    let mut client = database::connect(url).await?;
    auscult_store::add_device(&mut client, &device_id, "soak benchmark fill").await?;
    let start = SystemTime::now() - DAY * args.days;
    let spacing = (DAY * args.days).as_secs_f64() / total as f64;
    let templates: Arc<Vec<Frame>> = Arc::new(
        (0..8u32)
            .map(|k| noise_frame(&device_id, k))
            .collect::<anyhow::Result<_>>()?,
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..args.fill_writers {
        let (url, templates, next, done) = (
            url.to_owned(),
            templates.clone(),
            next.clone(),
            done.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut client = database::connect(&url).await?;
            loop {
                let first = next.fetch_add(FILL_BATCH as u64, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(());
                }
                let batch: Vec<Frame> = (first..(first + FILL_BATCH as u64).min(total))
                    .map(|i| {
                        let mut frame = templates[(i % templates.len() as u64) as usize].clone();
                        frame.key.sensor_id = format!("mic-{}", i as usize % FILL_SENSORS);
                        frame.key.seq = (i / FILL_SENSORS as u64) as i64;
                        frame.captured_at = start + Duration::from_secs_f64(i as f64 * spacing);
                        frame
                    })
                    .collect();
                let refs: Vec<&Frame> = batch.iter().collect();
                let tx = client.transaction().await?;
                auscult_store::copy_frames(&tx, "frames", &refs, None, SystemTime::now()).await?;
                tx.commit().await?;
                done.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        let step = (total / 20).max(1);
        async move {
            let mut reported = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = done.load(Ordering::Relaxed);
                if now / step > reported / step {
                    eprintln!("    {:.0} %", now as f64 * 100.0 / total as f64);
                    reported = now;
                }
            }
        }
    };
    let progress = if args.json {
        None
    } else {
        Some(tokio::spawn(progress))
    };
    for writer in writers {
        writer.await??;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let seconds = started.elapsed().as_secs_f64();
    say("    analysing the filled partitions…");
    client.batch_execute("ANALYZE frames").await?;
    Ok(Filled {
        frames: total,
        bytes: total * 32_000,
        seconds,
    })
}

/// A one-second frame of white noise at about -20 dBFS, variant `k`.
fn noise_frame(device_id: &str, k: u32) -> anyhow::Result<Frame> {
    // A small xorshift generator: reproducible noise without a dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(k + 1);
    let samples: Vec<f32> = (0..16_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let now = SystemTime::now();
    Ok(RawFrame {
        device_id: device_id.into(),
        sensor_id: "mic-0".into(),
        stream_epoch: 1,
        seq: 0,
        captured_at: Some(now),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: Ok(SampleEncoding::PcmS16le),
        samples: Bytes::from(encode_pcm_s16le(&samples)),
    }
    .validate(&Limits::default(), now)?)
}

/// What `frames` holds and occupies.
struct Sizes {
    frames: i64,
    partitions: i64,
    /// Heap and TOAST of every partition.
    table_bytes: i64,
    index_bytes: i64,
    /// Dead rows left in the partitions (bloat a vacuum would have to reclaim).
    dead_rows: i64,
}

impl Sizes {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "frames": self.frames,
            "partitions": self.partitions,
            "table_bytes": self.table_bytes,
            "index_bytes": self.index_bytes,
            "dead_rows": self.dead_rows,
        })
    }
}

async fn sizes(client: &tokio_postgres::Client) -> anyhow::Result<Sizes> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM frames),
                    count(*),
                    coalesce(sum(pg_table_size(p.partition_oid)), 0)::int8,
                    coalesce(sum(pg_indexes_size(p.partition_oid)), 0)::int8,
                    coalesce(sum(s.n_dead_tup), 0)::int8
             FROM auscult_partitions p LEFT JOIN pg_stat_user_tables s ON s.relid = p.partition_oid
             WHERE p.parent = 'frames'",
            &[],
        )
        .await?;
    Ok(Sizes {
        frames: row.try_get(0)?,
        partitions: row.try_get(1)?,
        table_bytes: row.try_get(2)?,
        index_bytes: row.try_get(3)?,
        dead_rows: row.try_get(4)?,
    })
}
