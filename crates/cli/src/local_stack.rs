//! The whole stack on this machine, for the demo and the pipeline benchmark: PostgreSQL (a throwaway
//! server, or the one `DATABASE_URL` names), migrated, with the shipped model active, and the three
//! service binaries started beside this one on free ports.

use std::time::Duration;

use anyhow::Context;
use auscult_testkit::{PostgresServer, ServiceProcess, free_port, wait_for, wait_grpc_serving};

/// A running stack; everything it started stops when it is dropped.
#[derive(Debug)]
pub struct LocalStack {
    /// Held so that a throwaway server lives as long as the stack.
    _postgres: Option<PostgresServer>,
    pub database_url: String,
    pub ingest_endpoint: String,
    pub processes: Vec<ServiceProcess>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackPlan {
    pub analysis_replicas: usize,
    pub listener_replicas: usize,
    /// Extra environment for the listener (`AUSCULT__…`).
    pub listener_env: Vec<(String, String)>,
    /// Extra environment for ingest.
    pub ingest_env: Vec<(String, String)>,
}

impl LocalStack {
    pub async fn start(plan: &StackPlan, say: impl Fn(&str)) -> anyhow::Result<Self> {
        let (postgres, database_url) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                say("using the PostgreSQL in DATABASE_URL");
                (None, url)
            }
            _ => {
                say("starting a throwaway PostgreSQL");
                let server = tokio::task::spawn_blocking(PostgresServer::start)
                    .await?
                    .context(
                        "starting PostgreSQL: install the server binaries (apt install postgresql) or set DATABASE_URL",
                    )?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let mut client = crate::database::connect(&database_url).await?;
        auscult_store::migrate(&mut client)
            .await
            .context("migrating the database")?;
        if auscult_store::active_model(&client).await?.is_none() {
            let bytes = auscult_model::shipped::bytes()
                .context("this build ships no model: publish one with `auscult model publish`")?;
            let (info, _) = auscult_model::file::decode(bytes)?;
            auscult_store::publish_model(&client, &info.version, bytes, &serde_json::json!({}))
                .await?;
            auscult_store::activate_model(&mut client, &info.version).await?;
            say(&format!("activated the shipped model {}", info.version));
        }

        let mut stack = Self {
            _postgres: postgres,
            database_url: database_url.clone(),
            ingest_endpoint: String::new(),
            processes: Vec::new(),
        };
        let base = |grpc: u16, admin: u16| {
            vec![
                ("AUSCULT__DATABASE__URL".to_owned(), database_url.clone()),
                (
                    "AUSCULT__LISTEN_ADDR".to_owned(),
                    format!("127.0.0.1:{grpc}"),
                ),
                (
                    "AUSCULT__ADMIN_ADDR".to_owned(),
                    format!("127.0.0.1:{admin}"),
                ),
                ("RUST_LOG".to_owned(), "warn".to_owned()),
            ]
        };
        let (grpc, admin) = (free_port()?, free_port()?);
        let mut env = base(grpc, admin);
        env.extend(plan.ingest_env.iter().cloned());
        stack.spawn("auscult-ingest", env)?;
        stack.ingest_endpoint = format!("http://127.0.0.1:{grpc}");
        wait_serving(&stack.ingest_endpoint, "auscult.ingest.v1.Ingest").await?;
        say(&format!("ingest serving on {}", stack.ingest_endpoint));

        let mut analysis = Vec::new();
        for _ in 0..plan.analysis_replicas.max(1) {
            let (grpc, admin) = (free_port()?, free_port()?);
            stack.spawn("auscult-analysis", base(grpc, admin))?;
            analysis.push(format!("http://127.0.0.1:{grpc}"));
        }
        for endpoint in &analysis {
            wait_serving(endpoint, "auscult.analysis.v1.Analysis").await?;
        }
        say(&format!("analysis serving on {}", analysis.join(", ")));

        for i in 0..plan.listener_replicas.max(1) {
            let (grpc, admin) = (free_port()?, free_port()?);
            let mut env = base(grpc, admin);
            env.push(("AUSCULT__ANALYSIS__ENDPOINTS".into(), analysis.join(",")));
            env.push(("AUSCULT__INSTANCE".into(), format!("listener-{i}")));
            env.extend(plan.listener_env.iter().cloned());
            stack.spawn("auscult-listener", env)?;
            wait_serving(&format!("http://127.0.0.1:{grpc}"), "").await?;
        }
        say("listener running");
        Ok(stack)
    }

    fn spawn(&mut self, name: &str, env: Vec<(String, String)>) -> anyhow::Result<()> {
        let process = ServiceProcess::spawn(name, &[], env).with_context(|| {
            format!("starting {name}: build the workspace first (cargo build --release)")
        })?;
        self.processes.push(process);
        Ok(())
    }

    /// Stops the services gracefully.
    pub fn stop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            let _ = process.terminate(Duration::from_secs(10));
        }
    }
}

/// Waits up to `timeout` until every analysis job is settled (done or dead); `false` if some are not.
pub async fn wait_settled(client: &tokio_postgres::Client, timeout: Duration) -> bool {
    wait_for(timeout, || async {
        let depth = auscult_store::queue_depth(client).await.ok()?;
        (depth.open() == 0).then_some(())
    })
    .await
    .is_some()
}

async fn wait_serving(endpoint: &str, service: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?;
    if wait_grpc_serving(&channel, service, Duration::from_secs(60)).await {
        Ok(())
    } else {
        anyhow::bail!("{endpoint} did not report SERVING within a minute")
    }
}
