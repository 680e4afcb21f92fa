//! `auscult chaos`: faults injected into the three-node cluster (`auscult cluster up`) while gateways stream,
//! then a check of everything against a ledger the gateways kept. Each scenario streams from a device of
//! its own; the ledger records every frame generated and every acknowledgement with its time. Afterwards,
//! once the backlog is scored: no acknowledged frame missing from PostgreSQL, none stored twice, every
//! stored frame scored exactly once per model version, none dead.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use auscult_cluster::Cluster;
use auscult_gateway::{Event, Gateway, GatewayConfig, Identity, SyntheticSource};
use serde::Serialize;

use super::cluster::Location;

/// The fault scenarios, in the order a full run takes them.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "primary-kill",
        "the PostgreSQL primary (Patroni and postgres) SIGKILLed; Patroni promotes the synchronous standby",
    ),
    (
        "primary-kill-async",
        "the same with asynchronous replication: frames acknowledged just before the kill may be lost, and \
         how many is measured (not a failure)",
    ),
    (
        "node-kill",
        "every process on the primary's node SIGKILLed (etcd, Patroni, PostgreSQL, the three services), restarted 30 s later",
    ),
    (
        "node-partition",
        "the primary's node cut off the network for 30 s, then reconnected",
    ),
    (
        "ingest-kill",
        "the ingest replica on the primary's node SIGKILLed (inside open batches), restarted 30 s later",
    ),
    (
        "listener-kill",
        "the listener on the primary's node SIGKILLed while it holds jobs, restarted 30 s later",
    ),
    (
        "analysis-kill",
        "the analysis replica on the primary's node SIGKILLed mid-job, restarted 30 s later",
    ),
    (
        "gateway-cuts",
        "every gateway connection cut after each 25 frames, for the whole run",
    ),
];

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    location: Location,
    /// Run only this scenario (repeatable); all of them by default.
    #[arg(long = "scenario", value_parser = scenario_name)]
    scenarios: Vec<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Sensors streaming during each scenario.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    sensors: u32,
    /// Frames per second from each sensor.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds of load in each scenario; the fault comes after a third of it.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds the fault lasts before the node is restarted or reconnected: longer than Patroni's
    /// 20 s leader TTL, so that a dead primary is replaced rather than restarted.
    #[arg(long, default_value_t = 30)]
    fault_seconds: u64,
}

fn scenario_name(name: &str) -> Result<String, String> {
    if SCENARIOS.iter().any(|(n, _)| *n == name) {
        Ok(name.to_owned())
    } else {
        let names: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "unknown scenario {name:?}; known: {}",
            names.join(", ")
        ))
    }
}

/// The figures of one scenario, as the JSON reports them.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    name: String,
    generated: u64,
    acked: u64,
    persisted: i64,
    lost_acked: u64,
    duplicates_stored: i64,
    /// Documents in Elasticsearch; `null` while the cluster runs without it.
    indexed: Option<i64>,
    dead_lettered: i64,
    scored: i64,
    duplicate_results: i64,
    recovery_s: Option<f64>,
    peak_rss_mb: f64,
    passed: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 100.0) {
        bail!("--rate must be above 0 and at most 100 frames per second per sensor");
    }
    let cluster = Cluster::open(&args.location.dir)?;
    let names: Vec<String> = if args.scenarios.is_empty() {
        SCENARIOS.iter().map(|(n, _)| (*n).to_owned()).collect()
    } else {
        args.scenarios.clone()
    };
    let mut outcomes = Vec::new();
    for name in &names {
        eprintln!("{name}: waiting for a healthy cluster");
        cluster.wait_replicated(Duration::from_secs(120)).await?;
        cluster.wait_services(Duration::from_secs(60)).await?;
        let outcome = run_scenario(&cluster, name, &args)
            .await
            .with_context(|| format!("scenario {name}"))?;
        eprintln!(
            "{name}: {} — acked {} of {}, lost {}, stored twice {}, scored {} of {}, recovery {}",
            if outcome.passed { "passed" } else { "FAILED" },
            outcome.acked,
            outcome.generated,
            outcome.lost_acked,
            outcome.duplicates_stored,
            outcome.scored,
            outcome.persisted,
            outcome
                .recovery_s
                .map_or("-".to_owned(), |s| format!("{s:.1} s"))
        );
        outcomes.push(outcome);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "scenarios": outcomes }))?
        );
    }
    if outcomes.iter().all(|o| o.passed) {
        Ok(())
    } else {
        bail!("a scenario broke a guarantee")
    }
}

/// What the gateways learned, as it happened.
#[derive(Debug, Default)]
struct Ledger {
    /// (sensor, seq) of every acknowledged frame.
    acked: HashSet<(String, u64)>,
    /// When each acknowledgement arrived, with the frames' positions in the source's order.
    ack_times: Vec<(Instant, u64)>,
}

async fn run_scenario(cluster: &Cluster, name: &str, args: &Args) -> anyhow::Result<Outcome> {
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let device = format!("chaos-{name}-{epoch}");
    let (mut db, connection) =
        tokio_postgres::connect(&cluster.database_url(), tokio_postgres::NoTls)
            .await
            .context("connecting to the cluster's database")?;
    tokio::spawn(connection);
    let token = auscult_store::add_device(&mut db, &device, "auscult chaos").await?;
    drop(db);

    let sensors: Vec<String> = (0..args.sensors).map(|i| format!("mic-{i}")).collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let frames_per_sensor = (args.rate * args.seconds as f64).ceil() as u64;
    let identity = Identity {
        device_id: device.clone(),
        sensors: sensors.clone(),
        stream_epoch: epoch,
    };
    let source = SyntheticSource::new(identity, frames_per_sensor, epoch);
    let mut config = GatewayConfig::new(cluster.ingest_endpoints()[0].clone(), token);
    config.endpoints = cluster.ingest_endpoints();
    config.rate = Some(args.rate * f64::from(args.sensors));
    config.progress_timeout = Duration::from_secs(5);
    config.give_up_after = Duration::from_secs(180);
    if name == "gateway-cuts" {
        config.cut_every = Some(25);
    }
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let gateway = Gateway::new(config).with_events(events_tx);
    let progress = gateway.progress();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let sensor_count = u64::from(args.sensors);
    let recorder = {
        let ledger = Arc::clone(&ledger);
        let sensors = sensors.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Event::Acked(ranges) = event else {
                    continue;
                };
                let now = Instant::now();
                let Ok(mut ledger) = ledger.lock() else {
                    return;
                };
                for range in ranges {
                    let sensor = sensors
                        .iter()
                        .position(|s| *s == range.sensor_id)
                        .unwrap_or(0) as u64;
                    for seq in range.first_seq..=range.last_seq {
                        ledger.acked.insert((range.sensor_id.clone(), seq));
                        ledger.ack_times.push((now, seq * sensor_count + sensor));
                    }
                }
            }
        })
    };
    let asynchronous = name.ends_with("-async");
    if asynchronous {
        cluster.set_synchronous(false).await?;
    }
    let load = tokio::spawn(async move { gateway.run(source).await });

    // The fault, a third of the way in.
    tokio::time::sleep(Duration::from_secs(args.seconds / 3)).await;
    let primary = cluster
        .primary()
        .await
        .context("no primary before the fault")?;
    let node = cluster.nodes[primary].clone();
    let sent_before_fault = progress.sent.load(std::sync::atomic::Ordering::Relaxed);
    let fault_at = Instant::now();
    eprintln!("{name}: fault on {} (the primary)", node.name);
    match name {
        "primary-kill" | "primary-kill-async" => cluster.kill_database(&node)?,
        "node-kill" => cluster.kill_node(&node)?,
        "node-partition" => cluster.connect(&node, false)?,
        "ingest-kill" => cluster.kill_service(&node, "auscult-ingest")?,
        "listener-kill" => cluster.kill_service(&node, "auscult-listener")?,
        "analysis-kill" => cluster.kill_service(&node, "auscult-analysis")?,
        // The cuts run all along; nothing more to break.
        "gateway-cuts" => {}
        other => bail!("unknown scenario {other}"),
    }
    tokio::time::sleep(Duration::from_secs(args.fault_seconds)).await;
    match name {
        "node-partition" => cluster.connect(&node, true)?,
        "gateway-cuts" => {}
        _ => cluster.restart_node(&node)?,
    }
    eprintln!(
        "{name}: {} back; the primary is {}",
        node.name,
        cluster
            .primary()
            .await
            .map_or("unknown".to_owned(), |i| cluster.nodes[i].name.clone())
    );

    let summary = load
        .await
        .context("the load generator panicked")?
        .context("the gateways gave up")?;
    recorder.abort();
    let peak_rss_mb = peak_rss_mb(cluster);
    if asynchronous {
        cluster.set_synchronous(true).await?;
    }

    // Every stored frame is scored before the check.
    cluster.wait_replicated(Duration::from_secs(120)).await?;
    let (db, connection) = tokio_postgres::connect(&cluster.database_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to the cluster's database")?;
    tokio::spawn(connection);
    let drained = auscult_testkit::wait_for(Duration::from_secs(300), || async {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM analysis_jobs WHERE device_id = $1 AND state IN ('queued', 'running')",
                &[&device],
            )
            .await
            .ok()?
            .get(0);
        (open == 0).then_some(())
    })
    .await;
    if drained.is_none() {
        eprintln!("{name}: the backlog was not scored within 5 minutes");
    }

    let count = |sql: &'static str| {
        let db = &db;
        let device = device.clone();
        async move {
            let row = db.query_one(sql, &[&device]).await?;
            anyhow::Ok(row.get::<_, i64>(0))
        }
    };
    let stored_keys: HashSet<(String, u64)> = db
        .query(
            "SELECT sensor_id, seq FROM frames WHERE device_id = $1",
            &[&device],
        )
        .await?
        .iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                u64::try_from(row.get::<_, i64>(1)).unwrap_or(u64::MAX),
            )
        })
        .collect();
    let persisted = count("SELECT count(*) FROM frames WHERE device_id = $1").await?;
    let duplicates_stored = count(
        "SELECT count(*) FROM (SELECT 1 FROM frames WHERE device_id = $1
         GROUP BY sensor_id, stream_epoch, seq HAVING count(*) > 1) d",
    )
    .await?;
    let scored =
        count("SELECT count(DISTINCT frame_id) FROM analysis_results WHERE device_id = $1").await?;
    let duplicate_results = count(
        "SELECT count(*) FROM (SELECT 1 FROM analysis_results WHERE device_id = $1
         GROUP BY frame_id, model_version HAVING count(*) > 1) d",
    )
    .await?;
    let dead_lettered =
        count("SELECT count(*) FROM analysis_jobs WHERE device_id = $1 AND state = 'dead'").await?;

    let (acked, lost_acked, recovery_s) = {
        let ledger = ledger
            .lock()
            .map_err(|_| anyhow::anyhow!("the ledger's recorder panicked"))?;
        let lost = ledger
            .acked
            .iter()
            .filter(|key| !stored_keys.contains(*key))
            .count() as u64;
        // Recovery: from the fault to the first acknowledgement of a frame generated after it.
        let recovered = ledger
            .ack_times
            .iter()
            .filter(|(at, index)| *at >= fault_at && *index >= sent_before_fault)
            .map(|(at, _)| *at)
            .min();
        (
            ledger.acked.len() as u64,
            lost,
            recovered.map(|at| at.duration_since(fault_at).as_secs_f64()),
        )
    };
    let generated = frames_per_sensor * sensor_count;
    // With asynchronous replication a loss is the documented price, measured rather than failed.
    let passed = (asynchronous || lost_acked == 0)
        && duplicates_stored == 0
        && duplicate_results == 0
        && dead_lettered == 0
        && scored == persisted
        && summary.acked + summary.rejected == generated;
    Ok(Outcome {
        name: name.to_owned(),
        generated,
        acked,
        persisted,
        lost_acked,
        duplicates_stored,
        indexed: None,
        dead_lettered,
        scored,
        duplicate_results,
        recovery_s,
        peak_rss_mb,
        passed,
    })
}

/// The largest peak resident set (VmHWM) among the services running on the cluster's nodes, in MB.
fn peak_rss_mb(cluster: &Cluster) -> f64 {
    let mut peak_kb = 0u64;
    for node in &cluster.nodes {
        for process in auscult_cluster::processes_in(&node.namespace).unwrap_or_default() {
            if !process.comm.starts_with("auscult-") {
                continue;
            }
            let status = PathBuf::from("/proc")
                .join(process.pid.to_string())
                .join("status");
            let kb = std::fs::read_to_string(status)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
            peak_kb = peak_kb.max(kb);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let mb = peak_kb as f64 / 1024.0;
    (mb * 10.0).round() / 10.0
}
