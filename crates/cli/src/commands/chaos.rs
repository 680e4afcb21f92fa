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
use auscult_cluster::{Cluster, LinkFault};
use auscult_gateway::{
    Event, FrameSource, Gateway, GatewayConfig, Identity, SourceError, SyntheticSource,
};
use auscult_proto::ingest::v1 as pb;
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
        "ingest-drain",
        "the ingest replica on the primary's node sent SIGTERM: it stops taking frames, commits what it \
         holds and exits; restarted 30 s later",
    ),
    (
        "listener-disconnects",
        "every listener's database sessions terminated (pg_terminate_backend) every second for 30 s",
    ),
    (
        "analysis-kill",
        "the analysis replica on the primary's node SIGKILLed mid-job, restarted 30 s later",
    ),
    (
        "gateway-cuts",
        "every gateway connection cut after each 25 frames, for the whole run",
    ),
    (
        "search-down",
        "the Elasticsearch-API server SIGKILLed (losing all it held), restarted 30 s later: the listeners' \
         projection notices and refills it from PostgreSQL",
    ),
    (
        "search-throttled",
        "30 % of the requests to the search server answered 429 Too Many Requests for 30 s",
    ),
    (
        "link-latency",
        "every gateway→ingest and listener→analysis link 250 ms slower each way for 30 s",
    ),
    (
        "link-blackhole",
        "every gateway→ingest and listener→analysis link silent for 30 s: open connections stall, new ones \
         are accepted and hear nothing",
    ),
    (
        "link-reset",
        "every gateway→ingest and listener→analysis connection, open or new, reset for 30 s",
    ),
    (
        "clock-skew",
        "a second gateway whose clock runs 2 minutes ahead (faketime), its connection cut every 25 frames so \
         that it resends: its frames stored once each, its clock flagged by ingest",
    ),
    (
        "poison-frames",
        "hostile frames among the load: non-finite and out-of-range samples, a length that does not match, \
         silence, full-scale square waves and DC, one sample, the largest multichannel frame; the invalid \
         rejected with their reason, the rest scored, no service restarted",
    ),
];

/// The link groups the link scenarios break.
const SERVICE_LINKS: [&str; 2] = ["ingest", "analysis"];

/// How far ahead the skewed gateway's clock runs: well past ingest's tolerance, inside its limit for
/// capture times in the future (5 minutes), so its frames are flagged and still stored.
const CLOCK_SKEW: &str = "+120s";

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
    /// Frame documents in the Elasticsearch-API server once the projection caught up (or gave up).
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
    // An interrupted run may have left a link broken.
    lift_link_faults(&cluster)?;
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
    let skewed_device = format!("{device}-skewed");
    let skewed_token = if name == "clock-skew" {
        Some(
            auscult_store::add_device(&mut db, &skewed_device, "auscult chaos, skewed clock")
                .await?,
        )
    } else {
        None
    };
    drop(db);
    let devices: Vec<String> = if skewed_token.is_some() {
        vec![device.clone(), skewed_device.clone()]
    } else {
        vec![device.clone()]
    };
    let services_before = service_pids(cluster);

    let sensors: Vec<String> = (0..args.sensors).map(|i| format!("mic-{i}")).collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let frames_per_sensor = (args.rate * args.seconds as f64).ceil() as u64;
    let identity = Identity {
        device_id: device.clone(),
        sensors: sensors.clone(),
        stream_epoch: epoch,
    };
    let source = HostileSource {
        synthetic: SyntheticSource::new(identity, frames_per_sensor, epoch),
        every: if name == "poison-frames" { 20 } else { 0 },
        next: 0,
        hostile_sent: 0,
    };
    let endpoints = if name.starts_with("link-") {
        cluster.ingest_link_endpoints()
    } else {
        cluster.ingest_endpoints()
    };
    let mut config = GatewayConfig::new(endpoints[0].clone(), token);
    config.endpoints = endpoints;
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
    let poison_counts = source.expected_counts(frames_per_sensor * sensor_count);
    let load = tokio::spawn(async move { gateway.run(source).await });
    // Ingest's count of frames from skewed clocks, before: the skewed gateway's frames must add
    // exactly their sends to it, and nobody else's may.
    let flagged_before = skewed_frames_flagged(cluster).await;
    let skewed = match &skewed_token {
        Some(token) => Some(spawn_skewed_gateway(
            cluster,
            &skewed_device,
            token,
            args,
            epoch,
        )?),
        None => None,
    };

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
        "ingest-drain" => {
            cluster.signal_service(&node, "auscult-ingest", auscult_cluster::Signal::SIGTERM)?
        }
        "listener-disconnects" => {}
        "search-down" => cluster.kill_search()?,
        "search-throttled" => {
            cluster.set_link_fault("search", LinkFault::Throttle { share: 0.3 })?
        }
        "link-latency" | "link-blackhole" | "link-reset" => {
            let fault = match name {
                "link-latency" => LinkFault::Latency { ms: 250 },
                "link-blackhole" => LinkFault::Blackhole,
                _ => LinkFault::Reset,
            };
            for group in SERVICE_LINKS {
                cluster.set_link_fault(group, fault)?;
            }
        }
        // These faults run all along (cuts, the skewed gateway, the hostile frames); nothing more to break.
        "gateway-cuts" | "clock-skew" | "poison-frames" => {}
        other => bail!("unknown scenario {other}"),
    }
    if name == "listener-disconnects" {
        let terminated =
            terminate_listener_sessions(cluster, Duration::from_secs(args.fault_seconds)).await?;
        eprintln!("{name}: {terminated} listener sessions terminated");
    } else {
        tokio::time::sleep(Duration::from_secs(args.fault_seconds)).await;
    }
    let lifted_at = Instant::now();
    match name {
        "node-partition" => cluster.connect(&node, true)?,
        "search-down" => cluster.start_links().await?,
        "search-throttled" | "link-latency" | "link-blackhole" | "link-reset" => {
            lift_link_faults(cluster)?
        }
        "gateway-cuts" | "clock-skew" | "poison-frames" | "listener-disconnects" => {}
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
    let skewed = match skewed {
        Some(child) => Some(finish_skewed_gateway(child).await?),
        None => None,
    };
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
                "SELECT count(*) FROM analysis_jobs WHERE device_id = ANY($1) AND state IN ('queued', 'running')",
                &[&devices],
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
        let devices = devices.clone();
        async move {
            let row = db.query_one(sql, &[&devices]).await?;
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
    let persisted = count("SELECT count(*) FROM frames WHERE device_id = ANY($1)").await?;
    let duplicates_stored = count(
        "SELECT count(*) FROM (SELECT 1 FROM frames WHERE device_id = ANY($1)
         GROUP BY device_id, sensor_id, stream_epoch, seq HAVING count(*) > 1) d",
    )
    .await?;
    let scored =
        count("SELECT count(DISTINCT frame_id) FROM analysis_results WHERE device_id = ANY($1)")
            .await?;
    let duplicate_results = count(
        "SELECT count(*) FROM (SELECT 1 FROM analysis_results WHERE device_id = ANY($1)
         GROUP BY frame_id, model_version HAVING count(*) > 1) d",
    )
    .await?;
    let dead_lettered =
        count("SELECT count(*) FROM analysis_jobs WHERE device_id = ANY($1) AND state = 'dead'")
            .await?;
    let skewed_stored = db
        .query_one(
            "SELECT count(*) FROM frames WHERE device_id = $1",
            &[&skewed_device],
        )
        .await?
        .get::<_, i64>(0);

    // Elasticsearch equal to PostgreSQL once the projection catches up.
    let search = SearchCheck::new(cluster, &devices);
    let caught_up = auscult_testkit::wait_for(Duration::from_secs(180), || async {
        let (frames, results) = search.counts().await?;
        (frames == persisted && results == scored).then_some((frames, results))
    })
    .await;
    let (indexed, results_indexed) = match caught_up {
        Some((frames, results)) => (Some(frames), Some(results)),
        None => {
            let counts = search.counts().await;
            eprintln!(
                "{name}: the search server holds {counts:?} (frames, results) of {persisted} frames and {scored} \
                 results after 3 minutes"
            );
            (
                counts.map(|(frames, _)| frames),
                counts.map(|(_, results)| results),
            )
        }
    };
    let services_restarted = restarted(&services_before, &service_pids(cluster), name);

    let (acked, lost_acked, recovery_s) = {
        let ledger = ledger
            .lock()
            .map_err(|_| anyhow::anyhow!("the ledger's recorder panicked"))?;
        let lost = ledger
            .acked
            .iter()
            .filter(|key| !stored_keys.contains(*key))
            .count() as u64;
        // A silence longer than a few frames' spacing means acknowledgements stopped.
        let stopped_after =
            Duration::from_secs_f64((3.0 / (args.rate * f64::from(args.sensors))).max(1.0));
        let recovered = recovery(
            &ledger.ack_times,
            (fault_at, lifted_at),
            sent_before_fault,
            stopped_after,
        );
        (ledger.acked.len() as u64, lost, recovered)
    };
    let mut generated = frames_per_sensor * sensor_count;
    let (mut acked, mut lost_acked) = (acked, lost_acked);
    let mut gateways_done = summary.acked + summary.rejected == generated;
    // The skewed gateway's own ledger: it generated seqs 0..n of each sensor, so when it saw every
    // frame acknowledged, every one of them must be stored.
    let mut skew_flagged = true;
    if let Some(skewed) = &skewed {
        generated += skewed.generated;
        acked += skewed.acked;
        lost_acked +=
            u64::try_from(i64::try_from(skewed.acked).unwrap_or(i64::MAX) - skewed_stored)
                .unwrap_or(0);
        gateways_done &= skewed.acked + skewed.rejected == skewed.generated;
        let flagged = skewed_frames_flagged(cluster)
            .await
            .saturating_sub(flagged_before);
        skew_flagged = (skewed.acked..=skewed.acked + skewed.resent).contains(&flagged);
        eprintln!(
            "{name}: skewed gateway acked {} of {} ({} resent, {} already stored); ingest flagged {flagged} frames \
             from skewed clocks",
            skewed.acked, skewed.generated, skewed.resent, skewed.duplicates
        );
    }
    // Hostile frames: the invalid ones rejected at ingest, the ones too short to judge dead at once
    // with their reason, everything else scored.
    let expected_dead = poison_counts.too_short;
    let poison_as_expected = if name == "poison-frames" {
        eprintln!(
            "{name}: {} hostile frames sent, {} invalid ({} rejected), {} too short to judge ({dead_lettered} dead)",
            poison_counts.hostile, poison_counts.invalid, summary.rejected, poison_counts.too_short
        );
        summary.rejected == poison_counts.invalid && poison_counts.hostile > poison_counts.invalid
    } else {
        summary.rejected == 0
    };
    // With asynchronous replication a loss is the documented price, measured rather than failed.
    let passed = (asynchronous || lost_acked == 0)
        && duplicates_stored == 0
        && duplicate_results == 0
        && u64::try_from(dead_lettered).ok() == Some(expected_dead)
        && scored + dead_lettered == persisted
        && indexed == Some(persisted)
        && results_indexed == Some(scored)
        && gateways_done
        && skew_flagged
        && poison_as_expected
        && services_restarted.is_empty();
    if !services_restarted.is_empty() {
        eprintln!(
            "{name}: services restarted by themselves: {}",
            services_restarted.join(", ")
        );
    }
    Ok(Outcome {
        name: name.to_owned(),
        generated,
        acked,
        persisted,
        lost_acked,
        duplicates_stored,
        indexed,
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

/// Seconds from the fault until acknowledgements flow again: the end of the longest silence in them
/// that began while the fault lasted (or within 5 s of its end), when one is longer than
/// `stopped_after`; otherwise they never stopped, and it is the first acknowledgement of a frame
/// generated after the fault. A link that takes a moment to notice its fault still acknowledges what
/// was in flight; that is not recovery.
fn recovery(
    ack_times: &[(Instant, u64)],
    (fault_at, lifted_at): (Instant, Instant),
    sent_before_fault: u64,
    stopped_after: Duration,
) -> Option<f64> {
    let silences_from = lifted_at + Duration::from_secs(5);
    let mut times: Vec<Instant> = ack_times
        .iter()
        .filter(|(at, _)| *at >= fault_at)
        .map(|(at, _)| *at)
        .collect();
    times.sort_unstable();
    let mut longest: Option<(Duration, Instant)> = None;
    let mut previous = fault_at;
    for &at in &times {
        let gap = at.duration_since(previous);
        if previous <= silences_from && gap > stopped_after && longest.is_none_or(|(g, _)| gap > g)
        {
            longest = Some((gap, at));
        }
        previous = at;
    }
    let resumed = match longest {
        Some((_, at)) => Some(at),
        None => ack_times
            .iter()
            .filter(|(at, index)| *at >= fault_at && *index >= sent_before_fault)
            .map(|(at, _)| *at)
            .min(),
    };
    resumed.map(|at| at.duration_since(fault_at).as_secs_f64())
}

/// Terminates every listener's database sessions once a second for `duration`, through whichever node is
/// the primary; returns how many it ended.
async fn terminate_listener_sessions(cluster: &Cluster, duration: Duration) -> anyhow::Result<u64> {
    let (db, connection) = tokio_postgres::connect(&cluster.database_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to the cluster's database")?;
    tokio::spawn(connection);
    let until = Instant::now() + duration;
    let mut terminated = 0u64;
    while Instant::now() < until {
        let rows = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name LIKE 'auscult-listener%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .context("terminating the listeners' sessions")?;
        terminated += rows.len() as u64;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(terminated)
}

/// Lifts every link fault.
fn lift_link_faults(cluster: &Cluster) -> anyhow::Result<()> {
    for group in ["ingest", "analysis", "search"] {
        cluster.set_link_fault(group, LinkFault::Pass)?;
    }
    Ok(())
}

/// The pid of every service process on every node, by node and program.
fn service_pids(cluster: &Cluster) -> Vec<(String, String, u32)> {
    let mut pids = Vec::new();
    for node in &cluster.nodes {
        for process in auscult_cluster::processes_in(&node.namespace).unwrap_or_default() {
            if process.comm.starts_with("auscult-") {
                pids.push((node.name.clone(), process.comm, process.pid));
            }
        }
    }
    pids
}

/// The services that died and came back, or vanished, though the scenario never touched them: none of
/// the scenarios that leave the services alone may cost one a restart.
fn restarted(
    before: &[(String, String, u32)],
    after: &[(String, String, u32)],
    scenario: &str,
) -> Vec<String> {
    let touches_services = matches!(
        scenario,
        "node-kill" | "ingest-kill" | "ingest-drain" | "listener-kill" | "analysis-kill"
    );
    if touches_services {
        return Vec::new();
    }
    before
        .iter()
        .filter(|entry| !after.contains(entry))
        .map(|(node, program, pid)| format!("{program} on {node} (pid {pid})"))
        .collect()
}

/// The load's frames, every `every`-th replaced by a hostile one (none when `every` is 0).
struct HostileSource {
    synthetic: SyntheticSource,
    every: u64,
    next: u64,
    hostile_sent: u64,
}

/// What ingest and analysis must make of a hostile frame.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hostile {
    /// Rejected by ingest, with its reason.
    Invalid,
    /// Stored, then dead at once: shorter than one analysis window.
    TooShort,
    /// Stored and scored like any other.
    Scored,
}

/// The hostile frames, in turn: each is built from a good frame.
const HOSTILE: [(&str, Hostile); 8] = [
    ("non-finite sample", Hostile::Invalid),
    ("length not a whole number of samples", Hostile::Invalid),
    ("a sample of 1e9, far beyond any scale", Hostile::Invalid),
    ("silence", Hostile::Scored),
    ("full-scale square wave", Hostile::Scored),
    ("full-scale DC", Hostile::Scored),
    ("a single sample", Hostile::TooShort),
    ("48 kHz, 4 channels, float", Hostile::Scored),
];

/// How many hostile frames a run sends, and what must become of them.
#[derive(Debug, Clone, Copy, Default)]
struct HostileCounts {
    hostile: u64,
    invalid: u64,
    too_short: u64,
}

impl HostileSource {
    /// What a source of `total` frames yields.
    fn expected_counts(&self, total: u64) -> HostileCounts {
        if self.every == 0 {
            return HostileCounts::default();
        }
        let hostile = total / self.every;
        let of = |kind: Hostile| {
            (0..hostile)
                .filter(|i| HOSTILE[usize::try_from(*i).unwrap_or(0) % HOSTILE.len()].1 == kind)
                .count() as u64
        };
        HostileCounts {
            hostile,
            invalid: of(Hostile::Invalid),
            too_short: of(Hostile::TooShort),
        }
    }

    fn poison(frame: &mut pb::Frame, kind: usize) {
        let f32le = pb::SampleEncoding::F32le as i32;
        match kind {
            0 => {
                frame.encoding = f32le;
                let mut samples = vec![0.1f32; 16_000];
                samples[8_000] = f32::NAN;
                frame.samples = auscult_frame::encode_f32le(&samples).into();
            }
            1 => {
                let mut bytes = frame.samples.to_vec();
                bytes.push(0);
                frame.samples = bytes.into();
            }
            2 => {
                frame.encoding = f32le;
                let mut samples = vec![0.1f32; 16_000];
                samples[100] = 1.0e9;
                frame.samples = auscult_frame::encode_f32le(&samples).into();
            }
            3 => frame.samples = vec![0u8; 32_000].into(),
            4 => {
                let square: Vec<f32> = (0..16_000)
                    .map(|i| if (i / 40) % 2 == 0 { 1.0 } else { -1.0 })
                    .collect();
                frame.samples = auscult_frame::encode_pcm_s16le(&square).into();
            }
            5 => frame.samples = auscult_frame::encode_pcm_s16le(&[1.0f32; 16_000]).into(),
            6 => frame.samples = auscult_frame::encode_pcm_s16le(&[0.5f32]).into(),
            _ => {
                frame.encoding = f32le;
                frame.sample_rate_hz = 48_000;
                frame.channels = 4;
                #[allow(clippy::cast_precision_loss)]
                let samples: Vec<f32> = (0..48_000 * 4)
                    .map(|i| 0.5 * ((i / 4) as f32 * 0.05).sin())
                    .collect();
                frame.samples = auscult_frame::encode_f32le(&samples).into();
            }
        }
    }
}

impl FrameSource for HostileSource {
    fn next_frame(&mut self) -> Result<Option<pb::Frame>, SourceError> {
        let Some(mut frame) = self.synthetic.next_frame()? else {
            return Ok(None);
        };
        self.next += 1;
        if self.every > 0 && self.next.is_multiple_of(self.every) {
            let kind = usize::try_from(self.hostile_sent).unwrap_or(0) % HOSTILE.len();
            Self::poison(&mut frame, kind);
            self.hostile_sent += 1;
        }
        Ok(Some(frame))
    }

    fn total(&self) -> u64 {
        self.synthetic.total()
    }
}

/// What the skewed gateway reported.
#[derive(Debug, serde::Deserialize)]
struct SkewedSummary {
    #[serde(default)]
    generated: u64,
    acked: u64,
    rejected: u64,
    resent: u64,
    duplicates: u64,
}

/// Starts `auscult simulate` under faketime, its clock [`CLOCK_SKEW`] ahead, streaming the same load as the
/// ledger's gateway from a device of its own, its connection cut every 25 frames.
fn spawn_skewed_gateway(
    cluster: &Cluster,
    device: &str,
    token: &str,
    args: &Args,
    epoch: u64,
) -> anyhow::Result<(tokio::process::Child, u64)> {
    let auscult = std::env::current_exe().context("locating the auscult binary")?;
    let sensors = 2u32;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let frames = (args.rate * args.seconds as f64).ceil() as u64;
    let child = tokio::process::Command::new("faketime")
        .arg("-f")
        .arg(CLOCK_SKEW)
        .arg(auscult)
        .args(["simulate", "--json", "--device", device, "--endpoint"])
        .arg(cluster.ingest_endpoints().join(","))
        .args([
            "--sensors",
            &sensors.to_string(),
            "--frames",
            &frames.to_string(),
        ])
        .args(["--rate", &(args.rate * f64::from(sensors)).to_string()])
        .args(["--epoch", &epoch.to_string(), "--cut-every", "25"])
        .args(["--progress-timeout", "5", "--give-up-after", "180"])
        .env("AUSCULT_TOKEN", token)
        // Only the wall clock is skewed: timers keep real time, as on a gateway whose clock was set wrong.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the skewed gateway (faketime: apt install faketime)")?;
    Ok((child, frames * u64::from(sensors)))
}

async fn finish_skewed_gateway(
    (child, generated): (tokio::process::Child, u64),
) -> anyhow::Result<SkewedSummary> {
    let output = child
        .wait_with_output()
        .await
        .context("waiting for the skewed gateway")?;
    if !output.status.success() {
        bail!("the skewed gateway failed ({})", output.status);
    }
    let mut summary: SkewedSummary =
        serde_json::from_slice(&output.stdout).context("reading the skewed gateway's summary")?;
    summary.generated = generated;
    Ok(summary)
}

/// Frames ingest flagged as coming from a skewed clock, over the three replicas (the replicas the
/// scenario did not restart, so their counters cover the whole run).
async fn skewed_frames_flagged(cluster: &Cluster) -> u64 {
    let http = reqwest::Client::new();
    let mut flagged = 0.0;
    for node in &cluster.nodes {
        let url = format!(
            "http://{}:{}/metrics",
            node.ip,
            auscult_cluster::INGEST_ADMIN_PORT
        );
        let Ok(response) = http.get(url).timeout(Duration::from_secs(2)).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        flagged += text
            .lines()
            .filter(|line| line.starts_with("auscult_ingest_clock_skewed_frames_total"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let flagged = flagged as u64;
    flagged
}

/// Counts documents of the scenario's devices in the search server itself (not through its link).
struct SearchCheck {
    url: String,
    devices: Vec<String>,
    http: reqwest::Client,
}

impl SearchCheck {
    fn new(cluster: &Cluster, devices: &[String]) -> Self {
        Self {
            url: format!(
                "http://{}:{}",
                cluster.links.ip,
                auscult_cluster::SEARCH_SERVER_PORT
            ),
            devices: devices.to_vec(),
            http: reqwest::Client::new(),
        }
    }

    /// (frame documents, result documents).
    async fn counts(&self) -> Option<(i64, i64)> {
        Some((
            self.count("auscult-frames").await?,
            self.count("auscult-results").await?,
        ))
    }

    async fn count(&self, alias: &str) -> Option<i64> {
        let _ = self
            .http
            .post(format!("{}/{alias}/_refresh", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let body = serde_json::json!({
            "size": 0,
            "track_total_hits": true,
            "query": {"terms": {"device_id": self.devices}},
        });
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/{alias}/_search", self.url))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["hits"]["total"]["value"].as_i64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_the_end_of_the_silence_or_the_first_new_acknowledgement() {
        let fault = Instant::now();
        let at = |ms: u64| fault + Duration::from_millis(ms);
        // In-flight frames acknowledged just after the fault, then 30 s of silence.
        let stalled = [
            (at(50), 10),
            (at(80), 11),
            (at(30_080), 12),
            (at(30_100), 13),
        ];
        let lifted = at(30_000);
        let second = Duration::from_secs(1);
        let seconds = recovery(&stalled, (fault, lifted), 12, second).expect("recovered");
        assert!((seconds - 30.08).abs() < 1e-6, "{seconds}");
        // Never stopped: the first frame generated after the fault. A hiccup long after the fault
        // ended (10 s to 12 s, the fault lifted at 1 s) is not its recovery.
        let mut steady: Vec<(Instant, u64)> = vec![(at(50), 10)];
        steady.extend((0..50).map(|i| (at(100 + 200 * i), 12 + i)));
        steady.push((at(12_000), 100));
        let seconds = recovery(&steady, (fault, at(1_000)), 12, second).expect("recovered");
        assert!((seconds - 0.1).abs() < 1e-6, "{seconds}");
        assert_eq!(recovery(&[], (fault, lifted), 0, second), None);
    }
}
