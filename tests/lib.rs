//! The stack under test: a throwaway PostgreSQL, migrated, and the real `auscult-ingest` binary on free ports,
//! with helpers to reach both. Each test builds its own stack, so no test depends on another's state.

use std::{net::TcpStream, time::Duration};

use auscult_testkit::{PostgresServer, ServiceProcess, free_port, wait_grpc_serving};
use tokio_postgres::NoTls;
use tonic::transport::ClientTlsConfig;

/// PostgreSQL plus one ingest process.
#[derive(Debug)]
pub struct Stack {
    pub postgres: PostgresServer,
    pub ingest: ServiceProcess,
    pub grpc_port: u16,
    pub admin_port: u16,
    extra_env: Vec<(String, String)>,
    /// How test clients reach a TLS-serving ingest.
    client_tls: Option<ClientTlsConfig>,
}

impl Stack {
    /// Starts PostgreSQL, migrates it and starts ingest with `env` on top of the test defaults.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with_tls(env, None).await
    }

    /// Like [`Stack::start`], for an ingest configured (through `env`) to serve TLS; test clients use
    /// `client_tls`.
    pub async fn start_with_tls(env: &[(&str, &str)], client_tls: Option<ClientTlsConfig>) -> Self {
        let postgres = start_postgres().await;
        let mut client = connect(&postgres.url()).await;
        auscult_store::migrate(&mut client).await.expect("migrate");
        let extra_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (grpc_port, admin_port) = (free_port().expect("port"), free_port().expect("port"));
        let ingest = spawn_ingest(&postgres.url(), grpc_port, admin_port, &extra_env);
        let stack = Self {
            postgres,
            ingest,
            grpc_port,
            admin_port,
            extra_env,
            client_tls,
        };
        stack.wait_serving().await;
        stack
    }

    /// Starts ingest again on the same ports (after it was killed).
    pub async fn restart_ingest(&mut self) {
        self.ingest = spawn_ingest(
            &self.postgres.url(),
            self.grpc_port,
            self.admin_port,
            &self.extra_env,
        );
        self.wait_serving().await;
    }

    pub fn endpoint(&self) -> String {
        match self.client_tls {
            Some(_) => format!("https://127.0.0.1:{}", self.grpc_port),
            None => format!("http://127.0.0.1:{}", self.grpc_port),
        }
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.postgres.url()).await
    }

    /// Runs `auscult simulate --endpoint <this ingest> --device DEVICE --json ARGS…` as the gateway with
    /// `token`, asserts it succeeded and returns its JSON summary.
    pub async fn simulate(&self, device: &str, token: &str, args: &[&str]) -> serde_json::Value {
        self.simulate_with_env(device, token, args, &[]).await
    }

    /// Registers `device` and streams `sensors` × `frames` synthetic one-second frames (epoch 1) through
    /// ingest as fast as it takes them.
    pub async fn simulate_synthetic(&self, device: &str, sensors: u32, frames: u32) {
        let token = self.add_device(device).await;
        let (sensors, frames) = (sensors.to_string(), frames.to_string());
        let args = [
            "--sensors",
            &sensors,
            "--frames",
            &frames,
            "--rate",
            "0",
            "--epoch",
            "1",
        ];
        self.simulate(device, &token, &args).await;
    }

    /// [`Stack::simulate`] with `env` added to the gateway's environment.
    pub async fn simulate_with_env(
        &self,
        device: &str,
        token: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> serde_json::Value {
        let mut command = vec![
            "simulate".to_owned(),
            "--endpoint".into(),
            self.endpoint(),
            "--device".into(),
            device.into(),
            "--json".into(),
        ];
        command.extend(args.iter().map(|s| (*s).to_owned()));
        let binary = auscult_testkit::workspace_binary("auscult").expect("auscult binary");
        let token = token.to_owned();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary)
                .args(command)
                .env("AUSCULT_TOKEN", token)
                .envs(env)
                .output()
        })
        .await
        .expect("join")
        .expect("run simulate");
        assert!(
            output.status.success(),
            "simulate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("json summary")
    }

    /// Registers a device and returns its token.
    pub async fn add_device(&self, device_id: &str) -> String {
        let mut client = self.db().await;
        auscult_store::add_device(&mut client, device_id, "test")
            .await
            .expect("add device")
    }

    /// Waits until gRPC health reports the ingest service SERVING.
    pub async fn wait_serving(&self) {
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(self.endpoint()).expect("endpoint");
        if let Some(tls) = self.client_tls.clone() {
            endpoint = endpoint.tls_config(tls).expect("tls");
        }
        let serving = wait_grpc_serving(
            &endpoint,
            "auscult.ingest.v1.Ingest",
            Duration::from_secs(30),
        )
        .await;
        assert!(
            serving,
            "ingest did not become SERVING:\n{}",
            self.ingest.log()
        );
    }

    /// The Prometheus text from the admin endpoint.
    pub fn metrics(&self) -> String {
        fetch_metrics(self.admin_port)
    }
}

/// The Prometheus text a service serves on its admin port.
pub fn fetch_metrics(admin_port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", admin_port)).expect("admin connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

/// The current value of an unlabelled gauge or counter in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Starts an `auscult-ingest` on `database_url` and the given ports, with `extra` settings on top.
pub fn spawn_ingest(
    database_url: &str,
    grpc_port: u16,
    admin_port: u16,
    extra: &[(String, String)],
) -> ServiceProcess {
    let mut env = vec![
        ("AUSCULT__DATABASE__URL".to_owned(), database_url.to_owned()),
        (
            "AUSCULT__LISTEN_ADDR".to_owned(),
            format!("127.0.0.1:{grpc_port}"),
        ),
        (
            "AUSCULT__ADMIN_ADDR".to_owned(),
            format!("127.0.0.1:{admin_port}"),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    ServiceProcess::spawn("auscult-ingest", &[], env).expect("spawn ingest")
}

/// A throwaway PostgreSQL server, started off the async runtime (it waits for the server to accept).
pub async fn start_postgres() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("join")
        .expect("postgres")
}

/// One connection, driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Waits up to `timeout` until the single count `sql` returns satisfies `wanted` (a failing query counts
/// as not yet); whether it did.
pub async fn wait_for_count(
    client: &tokio_postgres::Client,
    sql: &str,
    timeout: Duration,
    wanted: impl Fn(i64) -> bool,
) -> bool {
    auscult_testkit::wait_for(timeout, || {
        let wanted = &wanted;
        async move {
            let count: i64 = client.query_one(sql, &[]).await.ok()?.try_get(0).ok()?;
            wanted(count).then_some(())
        }
    })
    .await
    .is_some()
}

/// Waits up to 30 s for `process` to log `needle`; fails the test with `why` and the log otherwise.
pub async fn expect_logged(process: &ServiceProcess, needle: &str, why: &str) {
    let logged = auscult_testkit::wait_for(Duration::from_secs(30), || {
        let log = process.log();
        async move { log.contains(needle).then_some(()) }
    })
    .await;
    assert!(logged.is_some(), "{why}:\n{}", process.log());
}

/// Waits until `ingest`, serving plain gRPC on `grpc_port`, reports SERVING; fails the test with its log
/// otherwise.
pub async fn wait_ingest_serving(ingest: &ServiceProcess, grpc_port: u16) {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .expect("endpoint");
    let serving = wait_grpc_serving(
        &endpoint,
        "auscult.ingest.v1.Ingest",
        Duration::from_secs(30),
    )
    .await;
    assert!(serving, "ingest did not become SERVING:\n{}", ingest.log());
}

/// (sensor_id, seq) → stored SHA-256 for every frame of `device`, after checking that each frame's audio, read
/// back as the analysis service reads it (decoded when stored compressed), is what its digest says was received.
pub async fn stored_frames(
    client: &tokio_postgres::Client,
    device: &str,
) -> Vec<(String, i64, Vec<u8>)> {
    use sha2::Digest;
    let rows = client
        .query("SELECT id, sensor_id, seq, samples_sha256 FROM frames WHERE device_id = $1 ORDER BY sensor_id, seq", &[&device])
        .await
        .expect("query");
    for chunk in rows.chunks(500) {
        let chunk_ids: Vec<i64> = chunk.iter().map(|r| r.get(0)).collect();
        let audio = auscult_store::frame_audio(client, &chunk_ids)
            .await
            .expect("stored audio decodes");
        for row in chunk {
            let id: i64 = row.get(0);
            let digest: Vec<u8> = row.get(3);
            assert_eq!(
                sha2::Sha256::digest(&audio[&id].samples).to_vec(),
                digest,
                "frame {id}: the stored audio is not what was received"
            );
        }
    }
    rows.iter()
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Publishes and activates the shipped model in the registry.
pub async fn activate_shipped_model(client: &mut tokio_postgres::Client) -> String {
    let shipped = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/model/shipped/auscult.model"),
    )
    .expect("shipped model");
    let (info, _) = auscult_model::file::decode(&shipped).expect("decode");
    auscult_store::publish_model(&*client, &info.version, &shipped, &serde_json::json!({}))
        .await
        .expect("publish");
    auscult_store::activate_model(client, &info.version)
        .await
        .expect("activate");
    info.version
}

/// An `auscult-analysis` process on free ports.
#[derive(Debug)]
pub struct AnalysisProcess {
    pub process: ServiceProcess,
    pub grpc_port: u16,
    pub admin_port: u16,
    /// How clients reach it when it serves TLS.
    client_tls: Option<ClientTlsConfig>,
}

impl AnalysisProcess {
    /// Starts one on `database_url` and waits until it is SERVING (a model must be active).
    pub async fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &[], None).await
    }

    /// Like [`AnalysisProcess::start`], with `env` on top; `client_tls` when `env` makes it serve TLS
    /// (for a certificate issued to `localhost`).
    pub async fn start_with(
        database_url: &str,
        env: &[(&str, &str)],
        client_tls: Option<ClientTlsConfig>,
    ) -> Self {
        Self::start_on(database_url, free_port().expect("port"), env, client_tls).await
    }

    /// Like [`AnalysisProcess::start_with`], serving gRPC on `grpc_port` (where a listener already
    /// looks for it).
    pub async fn start_on(
        database_url: &str,
        grpc_port: u16,
        env: &[(&str, &str)],
        client_tls: Option<ClientTlsConfig>,
    ) -> Self {
        let admin_port = free_port().expect("port");
        let mut vars: Vec<(String, String)> = vec![
            ("AUSCULT__DATABASE__URL".into(), database_url.to_owned()),
            (
                "AUSCULT__LISTEN_ADDR".into(),
                format!("127.0.0.1:{grpc_port}"),
            ),
            (
                "AUSCULT__ADMIN_ADDR".into(),
                format!("127.0.0.1:{admin_port}"),
            ),
            ("AUSCULT__SCORING__WORKERS".into(), "1".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let process =
            ServiceProcess::spawn("auscult-analysis", &[], vars).expect("start auscult-analysis");
        let analysis = Self {
            process,
            grpc_port,
            admin_port,
            client_tls,
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(analysis.endpoint()).expect("endpoint");
        if let Some(tls) = analysis.client_tls.clone() {
            endpoint = endpoint.tls_config(tls).expect("tls");
        }
        let serving = wait_grpc_serving(
            &endpoint,
            "auscult.analysis.v1.Analysis",
            Duration::from_secs(60),
        )
        .await;
        assert!(
            serving,
            "analysis did not become SERVING:\n{}",
            analysis.process.log()
        );
        analysis
    }

    pub fn endpoint(&self) -> String {
        if self.client_tls.is_some() {
            format!("https://localhost:{}", self.grpc_port)
        } else {
            format!("http://127.0.0.1:{}", self.grpc_port)
        }
    }
}

/// Runs the `auscult` command with `DATABASE_URL` = `database_url` and waits for it.
pub fn auscult(database_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(
        auscult_testkit::workspace_binary("auscult").expect("auscult binary"),
    )
    .args(args)
    .env("DATABASE_URL", database_url)
    .output()
    .expect("run auscult")
}

/// Asserts that a command succeeded and returns its stdout.
pub fn succeeded(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts an `auscult-listener` named `instance` calling `analysis`, with `env` on top.
pub fn start_listener(
    database_url: &str,
    instance: &str,
    analysis: &[String],
    env: &[(&str, &str)],
) -> ServiceProcess {
    let mut vars: Vec<(String, String)> = vec![
        ("AUSCULT__DATABASE__URL".into(), database_url.to_owned()),
        (
            "AUSCULT__LISTEN_ADDR".into(),
            format!("127.0.0.1:{}", free_port().expect("port")),
        ),
        (
            "AUSCULT__ADMIN_ADDR".into(),
            format!("127.0.0.1:{}", free_port().expect("port")),
        ),
        ("AUSCULT__INSTANCE".into(), instance.to_owned()),
        ("AUSCULT__ANALYSIS__ENDPOINTS".into(), analysis.join(",")),
        ("AUSCULT__JOBS__SWEEP_INTERVAL".into(), "500ms".into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    ServiceProcess::spawn("auscult-listener", &[], vars).expect("start auscult-listener")
}

/// (done jobs, all jobs, result rows, distinct frames with a result).
pub async fn scoring_progress(client: &tokio_postgres::Client) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM analysis_jobs WHERE state = 'done'),
                    (SELECT count(*) FROM analysis_jobs),
                    (SELECT count(*) FROM analysis_results),
                    (SELECT count(DISTINCT frame_id) FROM analysis_results)",
            &[],
        )
        .await
        .expect("progress");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// One second of 16 kHz 16-bit audio (32 KB): a quiet sawtooth, the same every time.
pub fn one_second_pcm16() -> bytes::Bytes {
    let samples: Vec<u8> = (0..16_000i32)
        .flat_map(|i| ((i % 200 - 100) as i16 * 50).to_le_bytes())
        .collect();
    bytes::Bytes::from(samples)
}

/// A valid gateway frame: `samples` (16 kHz 16-bit mono) of `device`/`sensor`, number `seq` of epoch 1,
/// captured now.
pub fn pcm16_frame(
    device: &str,
    sensor: &str,
    seq: u64,
    samples: &bytes::Bytes,
) -> auscult_proto::ingest::v1::Frame {
    use auscult_proto::ingest::v1 as pb;
    pb::Frame {
        device_id: device.into(),
        sensor_id: sensor.into(),
        stream_epoch: 1,
        seq,
        captured_at: Some(auscult_proto::system_time_to_timestamp(
            std::time::SystemTime::now(),
        )),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: pb::SampleEncoding::PcmS16le.into(),
        samples: samples.clone(),
        traceparent: String::new(),
        sent_at: None,
    }
}
