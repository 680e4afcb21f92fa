//! `auscult retention`: what PostgreSQL holds per kind and partition, what leaves next and when, and a
//! maintenance pass on demand.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use auscult_store::{LifecycleStatus, PassOutcome, PassReport};

use crate::database::{self, DatabaseArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Size per kind and partition, the policy in force, what a pass drops next and when.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one lifecycle pass now, with the policy in force (the one ingest last applied, or the defaults):
    /// create partitions ahead, keep the audio around anomalies and alerts, drop what expired, prune queues.
    Run {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the pass's report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { database, json } => {
            let client = database::connect(&database.url).await?;
            let status = auscult_store::lifecycle_status(&client, SystemTime::now())
                .await
                .context("reading the lifecycle status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
            } else {
                print_status(&status);
            }
        }
        Command::Run { database, json } => {
            let mut client = database::connect(&database.url).await?;
            let policy = auscult_store::lifecycle_status(&client, SystemTime::now())
                .await
                .context("reading the policy in force")?
                .policy;
            let instance = format!("auscult retention run/{}", std::process::id());
            match run_pass_waiting(&mut client, &policy, &instance).await? {
                report if json => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                report => {
                    println!(
                        "created {} partition(s), dropped {} ({} freed), kept {} frame(s) of audio, pruned {} \
                         done job(s), {} orphan row(s), {} kept frame(s), {} alert(s) in {} ms",
                        report.partitions_created.len(),
                        report.partitions_dropped.len(),
                        bytes(report.bytes_freed()),
                        report.frames_kept,
                        report.done_jobs_pruned,
                        report.orphans_pruned,
                        report.kept_frames_pruned,
                        report.alerts_pruned,
                        report.took_ms
                    );
                    for dropped in &report.partitions_dropped {
                        println!("  dropped {} ({})", dropped.partition, bytes(dropped.bytes));
                    }
                }
            }
        }
    }
    Ok(())
}

/// How long `retention run` waits for a pass that another instance is running.
const WAIT_FOR_OTHER_PASS: Duration = Duration::from_secs(300);

/// Runs a pass; while another instance (an ingest replica) runs one, waits for it to finish, then runs its
/// own: whoever asks for a pass gets one that started after they asked.
async fn run_pass_waiting(
    client: &mut tokio_postgres::Client,
    policy: &auscult_store::RetentionPolicy,
    instance: &str,
) -> anyhow::Result<PassReport> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER_PASS;
    let mut said = false;
    loop {
        match auscult_store::run_pass(client, policy, SystemTime::now(), instance)
            .await
            .context("lifecycle pass")?
        {
            PassOutcome::Ran(report) => return Ok(report),
            PassOutcome::Busy if tokio::time::Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "another lifecycle pass is running (an ingest replica's); waiting for it"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            PassOutcome::Busy => anyhow::bail!(
                "another lifecycle pass was still running after {}",
                humantime::format_duration(WAIT_FOR_OTHER_PASS)
            ),
        }
    }
}

/// When a partition goes: its time, or that the next pass drops it.
fn drop_time(at: SystemTime, now: SystemTime) -> String {
    if at <= now {
        "due (next pass)".into()
    } else {
        timestamp(at)
    }
}

fn print_status(status: &LifecycleStatus) {
    let now = SystemTime::now();
    match (&status.last_pass_by, status.last_pass_at) {
        (Some(by), Some(at)) => println!("last pass: {} by {by}", timestamp(at)),
        _ => println!("last pass: none yet (policy shown: the defaults)"),
    }
    for kind in &status.partitioned {
        println!(
            "\n{} ({}): {} in {} partition(s), kept {}",
            kind.kind,
            kind.table,
            bytes(kind.bytes),
            kind.partitions.len(),
            humantime::format_duration(Duration::from_secs(kind.retention_s))
        );
        println!(
            "  {:<40} {:<22} {:<22} {:>12} {:>10}  drops at",
            "partition", "from", "to", "rows (est.)", "size"
        );
        for p in &kind.partitions {
            println!(
                "  {:<40} {:<22} {:<22} {:>12} {:>10}  {}",
                p.name,
                p.from
                    .map_or_else(|| "(before partitioning)".to_string(), timestamp),
                timestamp(p.to),
                p.rows_estimate,
                bytes(p.bytes),
                drop_time(p.drops_at, now)
            );
        }
    }
    let kept = &status.kept_audio;
    println!(
        "\nkept audio (frames_kept): {} frame(s), {}, oldest captured {}, next leaves {}",
        kept.frames,
        bytes(kept.bytes),
        kept.oldest_captured_at
            .map_or_else(|| "-".into(), timestamp),
        kept.next_prune_at.map_or_else(|| "-".into(), timestamp)
    );
    println!(
        "\n{:<16} {:>12} {:>12} {:>10}",
        "table", "rows", "prunable", "size"
    );
    for q in &status.queues {
        println!(
            "{:<16} {:>12} {:>12} {:>10}",
            q.table,
            q.rows,
            q.prunable,
            bytes(q.bytes)
        );
    }
    if let Some((table, partition, at)) = status.next_drop() {
        println!(
            "\nnext to go: {table} partition {partition}, {}",
            drop_time(at, now)
        );
    }
}

/// The status with times as RFC 3339 strings, for scripts.
fn status_json(status: &LifecycleStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    rewrite_times(&mut value);
    if let Some((table, partition, at)) = status.next_drop() {
        value["next_drop"] =
            serde_json::json!({"table": table, "partition": partition, "at": timestamp(at)});
    }
    value
}

/// serde writes a `SystemTime` as {secs_since_epoch, nanos_since_epoch}; people and scripts read RFC 3339.
fn rewrite_times(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(secs), Some(nanos), 2) = (
                map.get("secs_since_epoch")
                    .and_then(serde_json::Value::as_u64),
                map.get("nanos_since_epoch")
                    .and_then(serde_json::Value::as_u64),
                map.len(),
            ) {
                let at =
                    SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).unwrap_or(0));
                *value = serde_json::Value::String(timestamp(at));
                return;
            }
            map.values_mut().for_each(rewrite_times);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite_times),
        _ => {}
    }
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Bytes in binary units.
fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= (1u64 << 30) as f64 => format!("{:.1} GiB", n / (1u64 << 30) as f64),
        n if n >= (1u64 << 20) as f64 => format!("{:.1} MiB", n / (1u64 << 20) as f64),
        n if n >= 1024.0 => format!("{:.0} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}
