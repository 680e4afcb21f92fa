//! `auscult demo`: the whole system on this machine. A throwaway PostgreSQL (or `DATABASE_URL`), the
//! three services, one simulated gateway per recording streaming it in real time, the verdicts and
//! alerts as they arrive, and a summary of what happened.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use auscult_audio::manifest::{self, Label, Recording};
use auscult_gateway::{Gateway, GatewayConfig, Identity, Summary, WavSource};
use serde_json::json;

use crate::local_stack::{self, LocalStack, StackPlan};

/// Runs the whole system on this machine and streams recordings through it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A folder of recordings with a manifest (`path, machine_type, machine_id, …, label`); default:
    /// the sample recordings in this repository.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seconds streamed from each recording, looping it when shorter. Verdicts count toward alerts
    /// from the tenth second on, when a sensor has a clip's worth of history.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Frames per second from each gateway; 0 streams as fast as ingest takes them.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// At most this many recordings (one simulated gateway each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=200))]
    max_recordings: u64,
    /// Also index everything into this Elasticsearch (comma-separated node URLs) and report the
    /// indexing lag; the index design is applied as the listener starts.
    #[arg(long, value_name = "URL")]
    elastic: Option<String>,
    /// Print only the summary, as JSON.
    #[arg(long)]
    json: bool,
}

/// The sample recordings shipped with the source, when the binary runs from a checkout.
fn default_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/recordings")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite() && args.rate <= 1000.0) {
        anyhow::bail!(
            "--rate must be between 0 and 1000 frames per second, got {}",
            args.rate
        );
    }
    let data = args.data.clone().unwrap_or_else(default_data);
    let mut recordings = manifest::discover(&data).with_context(|| {
        format!(
            "reading recordings from {} (pass --data DIR with a manifest.csv)",
            data.display()
        )
    })?;
    recordings.truncate(usize::try_from(args.max_recordings).unwrap_or(usize::MAX));
    if recordings.is_empty() {
        anyhow::bail!("{}: the manifest lists no recordings", data.display());
    }
    let quiet = args.json;
    let say = |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let mut listener_env = vec![("AUSCULT__JOBS__SWEEP_INTERVAL".into(), "500ms".into())];
    let mut cluster = None;
    if let Some(urls) = &args.elastic {
        let settings = auscult_search::ElasticSettings {
            urls: urls.split(',').map(str::to_owned).collect(),
            ..auscult_search::ElasticSettings::default()
        };
        settings.validate()?;
        cluster = Some((urls.as_str(), auscult_search::Cluster::connect(&settings)?));
        listener_env.push(("AUSCULT__ELASTIC__URLS".into(), urls.clone()));
        // One node on this machine: a replica could never be allocated.
        listener_env.push(("AUSCULT__ELASTIC__REPLICAS".into(), "0".into()));
    }
    let mut stack = LocalStack::start(
        &StackPlan {
            analysis_replicas: 1,
            listener_replicas: 1,
            listener_env,
            ingest_env: Vec::new(),
        },
        say,
    )
    .await?;
    let cluster = cluster.as_ref().map(|(urls, cluster)| (*urls, cluster));
    let outcome = match cluster {
        Some((urls, cluster)) => check_cluster(&stack.database_url, urls, cluster).await,
        None => Ok(()),
    };
    let outcome = match outcome {
        Ok(()) => {
            stream_and_summarise(&args, &stack, cluster.map(|(_, c)| c), &recordings, say).await
        }
        Err(e) => Err(e),
    };
    stack.stop();
    let summary = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

async fn stream_and_summarise(
    args: &Args,
    stack: &LocalStack,
    cluster: Option<&auscult_search::Cluster>,
    recordings: &[Recording],
    say: impl Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    let mut client = crate::database::connect(&stack.database_url).await?;
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut gateways = Vec::new();
    let mut devices: HashMap<String, &Recording> = HashMap::new();
    for (i, recording) in recordings.iter().enumerate() {
        let device = format!("demo-{epoch}-{i:02}");
        let token = auscult_store::add_device(&mut client, &device, "auscult demo").await?;
        client
            .execute(
                "INSERT INTO sensor_machines VALUES ($1, 'mic-0', $2, $3)",
                &[&device, &recording.machine_type, &recording.machine_id],
            )
            .await?;
        let mut config = GatewayConfig::new(stack.ingest_endpoint.clone(), token);
        config.rate = (args.rate > 0.0).then_some(args.rate);
        let identity = Identity {
            device_id: device.clone(),
            sensors: vec!["mic-0".into()],
            stream_epoch: epoch,
        };
        let source = WavSource::new(
            identity,
            std::slice::from_ref(&recording.path),
            args.seconds,
            1.0,
        )?;
        gateways.push(tokio::spawn(async move {
            Gateway::new(config).run(source).await
        }));
        devices.insert(device, recording);
    }
    say(&format!(
        "streaming {} recordings, {} s each, through {} simulated gateways",
        recordings.len(),
        args.seconds,
        recordings.len()
    ));

    let watcher = {
        let url = stack.database_url.clone();
        let names: HashMap<String, String> = devices
            .iter()
            .map(|(d, r)| (d.clone(), file_name(r)))
            .collect();
        let quiet = args.json;
        tokio::spawn(async move { watch(&url, names, quiet).await })
    };
    let mut summaries: Vec<Summary> = Vec::new();
    for gateway in gateways {
        summaries.push(gateway.await?.context("a simulated gateway failed")?);
    }
    let settled = local_stack::wait_settled(&client, Duration::from_secs(300)).await;
    // One more look so the last alerts are shown.
    tokio::time::sleep(Duration::from_millis(600)).await;
    watcher.abort();
    if !settled {
        say("some frames were still waiting for analysis after 5 minutes");
    }
    let mut summary = summarise(&client, &summaries, &devices).await?;
    if let Some(cluster) = cluster {
        let ids: Vec<String> = devices.keys().cloned().collect();
        summary["elastic"] = elastic_summary(&client, cluster, &ids, &say).await?;
    }
    Ok(summary)
}

/// Refuses a cluster that already holds another database's projection (an earlier demo's throwaway
/// database, another installation): the demo's documents would never be indexed there.
async fn check_cluster(
    database_url: &str,
    urls: &str,
    cluster: &auscult_search::Cluster,
) -> anyhow::Result<()> {
    use auscult_search::projection::{ProjectionState, projection_state};
    let client = crate::database::connect(database_url).await?;
    let ours = auscult_store::projection_id(&client).await?;
    match projection_state(cluster, &ours)
        .await
        .with_context(|| format!("reaching Elasticsearch at {urls}"))?
    {
        ProjectionState::Foreign(other) => anyhow::bail!(
            "the cluster at {urls} already holds another auscult database's documents (projection {other}); \
             give the demo an empty cluster, or the same database with DATABASE_URL"
        ),
        ProjectionState::Present | ProjectionState::Missing => Ok(()),
    }
}

/// Waits for the indexer to drain the outbox, then reads back what Elasticsearch holds for the demo's
/// devices: documents per alias, dead letters, indexing lag and rate.
async fn elastic_summary(
    client: &tokio_postgres::Client,
    cluster: &auscult_search::Cluster,
    devices: &[String],
    say: &impl Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    use auscult_search::design::KindLayout;
    say("waiting for the indexer to empty the search outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let depth = auscult_store::outbox_depth(client).await?;
        if depth.pending == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            say(&format!(
                "{} documents still waiting for Elasticsearch after 2 minutes (oldest {:.0} s)",
                depth.pending,
                depth.lag.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = serde_json::Map::new();
    let mut total = 0;
    for kind in auscult_store::SearchKind::ALL {
        cluster.refresh(kind.alias()).await.ok();
        let answer = cluster
            .search(
                kind.alias(),
                &json!({"size": 0, "track_total_hits": true,
                        "query": {"terms": {"device_id": devices}}}),
            )
            .await;
        let count = answer
            .ok()
            .and_then(|a| a["hits"]["total"]["value"].as_i64())
            .unwrap_or(0);
        total += count;
        out.insert(
            kind.alias().trim_start_matches("auscult-").to_owned(),
            json!(count),
        );
    }
    let timing = cluster
        .search(
            "auscult-frames,auscult-results",
            &json!({"size": 0, "query": {"terms": {"device_id": devices}}, "aggs": {
                "lag": {"percentiles": {"field": "index_lag_ms", "percents": [50, 99]}},
                "first": {"min": {"field": "indexed_at"}},
                "last": {"max": {"field": "indexed_at"}}}}),
        )
        .await?;
    let aggs = &timing["aggregations"];
    let span_s = (aggs["last"]["value"].as_f64().unwrap_or(0.0)
        - aggs["first"]["value"].as_f64().unwrap_or(0.0))
        / 1000.0;
    let round = crate::commands::simulate::round3;
    out.insert("documents".into(), json!(total));
    out.insert(
        "dead_letters".into(),
        json!(auscult_store::outbox_depth(client).await?.dead_letters),
    );
    out.insert(
        "index_lag_p50_ms".into(),
        json!(aggs["lag"]["values"]["50.0"].as_f64().map(round)),
    );
    out.insert(
        "index_lag_p99_ms".into(),
        json!(aggs["lag"]["values"]["99.0"].as_f64().map(round)),
    );
    out.insert(
        "documents_per_s".into(),
        json!((span_s > 0.0).then(|| round(total as f64 / span_s))),
    );
    Ok(serde_json::Value::Object(out))
}

fn file_name(recording: &Recording) -> String {
    recording
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Prints alerts and scoring progress as they happen.
async fn watch(url: &str, names: HashMap<String, String>, quiet: bool) {
    let Ok(client) = crate::database::connect(url).await else {
        return;
    };
    let (mut last_alert, mut last_health) = (0_i64, 0_i64);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if quiet {
            continue;
        }
        if let Ok(rows) = client
            .query(
                "SELECT a.id, a.device_id, a.machine, a.state, a.peak_score, a.threshold, a.top_bands::text
                 FROM alerts a WHERE a.id > $1 OR (a.state = 'resolved' AND a.resolved_at > now() - interval '600 ms')
                 ORDER BY a.id",
                &[&last_alert],
            )
            .await
        {
            for row in rows {
                let id: i64 = row.get(0);
                let device: String = row.get(1);
                let bands: String = row.get(6);
                let name = names.get(&device).cloned().unwrap_or_default();
                eprintln!(
                    "  ALERT {:<8} {} ({name}): score {:.2} vs threshold {:.2}; bands {}",
                    row.get::<_, String>(3),
                    row.get::<_, String>(2),
                    row.get::<_, f64>(4),
                    row.get::<_, f64>(5),
                    describe_bands(&bands)
                );
                last_alert = last_alert.max(id);
            }
        }
        if let Ok(rows) = client
            .query(
                "SELECT id, device_id, kind, detail FROM health_events WHERE id > $1 ORDER BY id",
                &[&last_health],
            )
            .await
        {
            for row in rows {
                let device: String = row.get(1);
                eprintln!(
                    "  HEALTH {} {}: {}",
                    row.get::<_, String>(2),
                    names.get(&device).cloned().unwrap_or(device),
                    row.get::<_, String>(3)
                );
                last_health = last_health.max(row.get(0));
            }
        }
        if let Ok(row) = client
            .query_one(
                "SELECT (SELECT count(*) FROM frames), (SELECT count(*) FROM analysis_results),
                        (SELECT count(*) FROM analysis_results WHERE anomalous AND clip)",
                &[],
            )
            .await
        {
            eprintln!(
                "  stored {:>5}  scored {:>5}  anomalous clip verdicts {:>4}",
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            );
        }
    }
}

/// "3–4 kHz peak −5.1 dB, …" from the stored top bands.
fn describe_bands(json: &str) -> String {
    let bands: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    bands
        .iter()
        .map(|b| {
            format!(
                "{:.0}–{:.0} Hz {} {:+.1} dB",
                b["low_hz"].as_f64().unwrap_or(0.0),
                b["high_hz"].as_f64().unwrap_or(0.0),
                b["measure"].as_str().unwrap_or(""),
                b["departure_db"].as_f64().unwrap_or(0.0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn summarise(
    client: &tokio_postgres::Client,
    gateways: &[Summary],
    devices: &HashMap<String, &Recording>,
) -> anyhow::Result<serde_json::Value> {
    let ids: Vec<&str> = devices.keys().map(String::as_str).collect();
    let totals = client
        .query_one(
            "SELECT (SELECT count(*) FROM frames WHERE device_id = ANY($1)),
                    (SELECT count(DISTINCT frame_id) FROM analysis_results WHERE device_id = ANY($1)),
                    (SELECT count(*) FROM alerts WHERE device_id = ANY($1)),
                    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_from_storage_ms)
                       FROM analysis_results WHERE device_id = ANY($1)),
                    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_from_storage_ms)
                       FROM analysis_results WHERE device_id = ANY($1))",
            &[&ids],
        )
        .await?;
    let per_device = client
        .query(
            "SELECT d.device_id,
                    (SELECT count(*) FROM analysis_results r WHERE r.device_id = d.device_id),
                    (SELECT count(*) FROM analysis_results r WHERE r.device_id = d.device_id AND r.anomalous AND r.clip),
                    (SELECT count(*) FROM alerts a WHERE a.device_id = d.device_id)
             FROM unnest($1::text[]) AS d(device_id) ORDER BY d.device_id",
            &[&ids],
        )
        .await?;
    let machines: Vec<serde_json::Value> = per_device
        .iter()
        .map(|row| {
            let device: String = row.get(0);
            let recording = devices.get(&device);
            let alerts: i64 = row.get(3);
            json!({
                "machine": recording.map(|r| format!("{}/{}", r.machine_type, r.machine_id)),
                "device_id": device,
                "sensor_id": "mic-0",
                "recording": recording.map(|r| file_name(r)),
                "label": recording.map(|r| match r.label { Label::Normal => "normal", Label::Anomaly => "anomaly" }),
                "frames": row.get::<_, i64>(1),
                "anomalous_windows": row.get::<_, i64>(2),
                "alerts": alerts,
                "verdict": if alerts > 0 { "anomalous" } else { "normal" },
            })
        })
        .collect();
    let round = |v: Option<f64>| v.map(crate::commands::simulate::round3);
    Ok(json!({
        "sent": gateways.iter().map(|g| g.sent).sum::<u64>(),
        "stored": totals.get::<_, i64>(0),
        "scored": totals.get::<_, i64>(1),
        "duplicates": gateways.iter().map(|g| g.duplicates).sum::<u64>(),
        "alerts": totals.get::<_, i64>(2),
        "latency_p50_ms": round(totals.get(3)),
        "latency_p99_ms": round(totals.get(4)),
        "machines": machines,
    }))
}

fn print_summary(summary: &serde_json::Value) {
    println!();
    println!(
        "frames sent {}, stored {}, scored {} ({} duplicates absorbed); {} alerts",
        summary["sent"],
        summary["stored"],
        summary["scored"],
        summary["duplicates"],
        summary["alerts"]
    );
    println!(
        "latency from stored to scored: p50 {} ms, p99 {} ms",
        summary["latency_p50_ms"], summary["latency_p99_ms"]
    );
    if let Some(elastic) = summary.get("elastic") {
        println!(
            "Elasticsearch: {} documents ({} frames, {} results, {} alerts, {} health events), {} dead letters; \
             indexing lag p50 {} ms, p99 {} ms; {} documents/s",
            elastic["documents"],
            elastic["frames"],
            elastic["results"],
            elastic["alerts"],
            elastic["health"],
            elastic["dead_letters"],
            elastic["index_lag_p50_ms"],
            elastic["index_lag_p99_ms"],
            elastic["documents_per_s"]
        );
    }
    println!();
    println!(
        "{:<20} {:<52} {:<8} {:>6} {:>10}  verdict",
        "machine", "recording", "label", "frames", "anomalous"
    );
    let mut agree = 0;
    let machines = summary["machines"].as_array().cloned().unwrap_or_default();
    for m in &machines {
        let verdict = m["verdict"].as_str().unwrap_or("");
        let label = m["label"].as_str().unwrap_or("");
        let right = (verdict == "anomalous") == (label == "anomaly");
        agree += usize::from(right);
        println!(
            "{:<20} {:<52} {:<8} {:>6} {:>10}  {}{}",
            m["machine"].as_str().unwrap_or(""),
            m["recording"].as_str().unwrap_or(""),
            label,
            m["frames"].as_i64().unwrap_or(0),
            m["anomalous_windows"].as_i64().unwrap_or(0),
            verdict,
            if right {
                ""
            } else {
                "  (differs from the label)"
            }
        );
    }
    println!();
    println!("{agree} of {} machines judged as labelled.", machines.len());
    println!(
        "Next: run it against your own PostgreSQL (DATABASE_URL=… auscult demo) and look at the tables \
         analysis_results, alerts and health_events; `auscult demo --data DIR` streams your recordings; \
         `auscult bench pipeline` measures latency and capacity."
    );
}
