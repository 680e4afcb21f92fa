//! A real PostgreSQL holding frames, verdicts, an alert and a health event, a real search server, and
//! an indexer between them.

#![allow(dead_code)]

pub mod fault_proxy;

use std::time::{Duration, SystemTime};

use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_search::{Cluster, ElasticSettings, Indexer};
use auscult_store::{AlertRule, NewResult, Pool};
use auscult_testkit::{PostgresServer, SearchServer};
use bytes::Bytes;
use tokio_postgres::NoTls;

pub struct Fixture {
    pub pg: PostgresServer,
    pub client: tokio_postgres::Client,
    pub pool: Pool,
    pub search: SearchServer,
    next_seq: u64,
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

impl Fixture {
    pub async fn start() -> Self {
        let pg = PostgresServer::start().expect("postgres");
        let mut client = connect(&pg.url()).await;
        auscult_store::migrate(&mut client).await.expect("migrate");
        // As with a listener indexing from the start: every document is queued as it is written.
        auscult_store::enable_indexing(&client)
            .await
            .expect("indexing on");
        auscult_store::add_device(&mut client, "gw-1", "")
            .await
            .expect("device");
        client
            .execute(
                "INSERT INTO sensor_machines VALUES ('gw-1', 'mic-a', 'valve', 'section_00'),
                                                    ('gw-1', '7', 'fan', 'section_01')",
                &[],
            )
            .await
            .expect("machines");
        let pool = auscult_store::connect_pool(&pg.url(), 8, "search-test").expect("pool");
        let search = SearchServer::start().await.expect("search server");
        Self {
            pg,
            client,
            pool,
            search,
            next_seq: 0,
        }
    }

    /// Settings for an indexer on `url`, quick to retry so that tests do not wait long.
    pub fn settings(&self, url: &str) -> ElasticSettings {
        ElasticSettings {
            urls: vec![url.to_owned()],
            request_timeout: Duration::from_secs(5),
            batch_documents: 50,
            poll_interval: Duration::from_millis(20),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(300),
            replicas: 0,
            ..ElasticSettings::default()
        }
    }

    pub fn indexer(&self) -> Indexer {
        Indexer::new(self.settings(&self.search.url()), self.pool.clone()).expect("indexer")
    }

    pub fn cluster(&self) -> Cluster {
        Cluster::connect(&self.settings(&self.search.url())).expect("cluster")
    }

    /// Stores `count` frames of each sensor, one second apart, the way ingest does (with their jobs
    /// and outbox rows).
    pub async fn store_frames(&mut self, sensors: &[&str], count: u64) {
        let now = SystemTime::now();
        let frames: Vec<Frame> = sensors
            .iter()
            .flat_map(|sensor| {
                (self.next_seq..self.next_seq + count).map(move |seq| {
                    RawFrame {
                        device_id: "gw-1".into(),
                        sensor_id: (*sensor).into(),
                        stream_epoch: 1,
                        seq,
                        captured_at: Some(now - Duration::from_secs(3600 - seq)),
                        sample_rate_hz: 16_000,
                        channels: 1,
                        encoding: Ok(SampleEncoding::PcmS16le),
                        samples: Bytes::from(encode_pcm_s16le(&vec![0.1; 1600])),
                    }
                    .validate(&Limits::default(), now)
                    .expect("valid frame")
                })
            })
            .collect();
        self.next_seq += count;
        let refs: Vec<&Frame> = frames.iter().collect();
        auscult_store::insert_frames(&mut self.client, &refs, now)
            .await
            .expect("insert frames");
    }

    /// Scores every queued frame the way the listener does: anomalous for sensors in `anomalous`.
    pub async fn score_all(&mut self, anomalous: &[&str]) {
        loop {
            let claim = auscult_store::claim_jobs(
                &mut self.client,
                "test",
                500,
                Duration::from_secs(60),
                3,
            )
            .await
            .expect("claim");
            if claim.jobs.is_empty() {
                return;
            }
            let results: Vec<NewResult> = claim
                .jobs
                .iter()
                .map(|job| verdict(job.frame_id, anomalous.contains(&job.sensor_id.as_str())))
                .collect();
            auscult_store::complete_jobs(
                &mut self.client,
                &claim.lease,
                &results,
                &AlertRule::default(),
                &[],
            )
            .await
            .expect("complete");
        }
    }

    /// A pipeline-health event, as the health watcher writes it.
    pub async fn health_event(&self, sensor: &str, kind: &str) {
        self.client
            .execute(
                "WITH e AS (INSERT INTO health_events (device_id, sensor_id, kind, detail)
                            VALUES ('gw-1', $1, $2, 'no frame for 12 s') RETURNING id)
                 INSERT INTO search_outbox (kind, ref_id) SELECT 'health', id FROM e",
                &[&sensor, &kind],
            )
            .await
            .expect("health event");
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Rows of each kind PostgreSQL holds: (frames, results, alerts, health events).
    pub async fn source_counts(&self) -> [i64; 4] {
        [
            self.count("SELECT count(*) FROM frames").await,
            self.count("SELECT count(*) FROM analysis_results").await,
            self.count("SELECT count(*) FROM alerts").await,
            self.count("SELECT count(*) FROM health_events").await,
        ]
    }

    /// Documents of each kind the cluster holds (after a refresh).
    pub async fn indexed_counts(&self, cluster: &Cluster) -> Option<[i64; 4]> {
        let mut counts = [0; 4];
        for (i, alias) in [
            "auscult-frames",
            "auscult-results",
            "auscult-alerts",
            "auscult-health",
        ]
        .iter()
        .enumerate()
        {
            cluster.refresh(alias).await.ok()?;
            let answer = cluster
                .search(
                    alias,
                    &serde_json::json!({"size": 0, "track_total_hits": true}),
                )
                .await
                .ok()?;
            counts[i] = answer["hits"]["total"]["value"].as_i64()?;
        }
        Some(counts)
    }

    /// Runs rounds until the outbox is empty (rows waiting for a retry included).
    pub async fn drain(&self, indexer: &Indexer) {
        for _ in 0..1000 {
            indexer.round().await.expect("round");
            if self.count("SELECT count(*) FROM search_outbox").await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the outbox did not drain");
    }
}

/// A verdict on `frame_id`: every fourth one judges a window, the others a clip; healthy clips
/// score a quarter to a half of their threshold, so that charts of a typical score have a spread
/// to summarise.
pub fn verdict(frame_id: i64, anomalous: bool) -> NewResult {
    let clip = frame_id % 4 != 0;
    NewResult {
        frame_id,
        model_version: "v1".into(),
        anomalous,
        anomaly_score: if anomalous {
            9.0
        } else {
            1.0 + 0.5 * (frame_id % 3) as f64
        },
        threshold: 4.0,
        class: "valve/section_00/pat_00/normal".into(),
        class_probability: 0.9,
        probabilities: serde_json::Map::from_iter([(
            "valve/section_00/pat_00/normal".to_string(),
            serde_json::json!(0.9),
        )]),
        profile: "valve/section_00".into(),
        profile_scope: "machine".into(),
        top_bands: serde_json::json!([
            {"low_hz": 1000.0, "high_hz": 2000.0, "measure": "peak", "departure_db": 6.5, "z": 4.0},
            {"low_hz": 250.0, "high_hz": 500.0, "measure": "mean", "departure_db": 3.0, "z": 2.5}
        ]),
        windows: 1,
        history_windows: 9,
        clip,
        parts: if !clip {
            serde_json::Value::Null
        } else if anomalous {
            serde_json::json!({
                "windows": 0.4, "band_spectrum": 0.2, "band_peaks": 0.9, "impulsiveness": 2.25,
                "impulsiveness_side": "duller", "furthest": "impulsiveness"
            })
        } else {
            serde_json::json!({
                "windows": 0.1, "band_spectrum": 0.2, "band_peaks": 0.25, "impulsiveness": 0.15,
                "impulsiveness_side": "sharper", "furthest": "band_peaks"
            })
        },
        summary_windows: 1,
        mean_window_score: 1.5,
        band_means: vec![-40.0; 64],
        band_peaks: vec![-20.0; 64],
        waveform_peaks: vec![0.5],
        waveform_energy: 100.0,
        waveform_samples: 16_000,
    }
}
