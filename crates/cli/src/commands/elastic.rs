//! `auscult elastic`: the Elasticsearch projection — apply the index design, see how far indexing
//! lags, queue everything again after an index was lost, replay documents that were refused.

use std::time::SystemTime;

use anyhow::Context;
use auscult_search::{Cluster, ElasticSettings, Retention, projection};
use auscult_store::SearchKind;
use serde_json::json;

use crate::database::{self, DatabaseArgs};

/// Where the cluster is and how to sign in.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Elasticsearch node URLs, comma-separated.
    #[arg(
        long = "elastic",
        env = "AUSCULT_ELASTIC_URL",
        value_delimiter = ',',
        required = true
    )]
    pub urls: Vec<String>,
    /// User for basic authentication (with ELASTIC_PASSWORD).
    #[arg(long, env = "ELASTIC_USERNAME")]
    pub elastic_username: Option<String>,
    #[arg(long, env = "ELASTIC_PASSWORD", hide_env_values = true)]
    pub elastic_password: Option<String>,
    /// Encoded API key instead of a user.
    #[arg(long, env = "ELASTIC_API_KEY", hide_env_values = true)]
    pub elastic_api_key: Option<String>,
    /// CA certificate (PEM) that signed the cluster's HTTPS certificate.
    #[arg(long, env = "ELASTIC_CA_FILE")]
    pub elastic_ca: Option<std::path::PathBuf>,
}

impl ClusterArgs {
    pub fn settings(&self) -> anyhow::Result<ElasticSettings> {
        let settings = ElasticSettings {
            urls: self.urls.clone(),
            username: self.elastic_username.clone().unwrap_or_default(),
            password: self.elastic_password.clone().unwrap_or_default(),
            api_key: self.elastic_api_key.clone().unwrap_or_default(),
            ca_path: self.elastic_ca.clone(),
            ..ElasticSettings::default()
        };
        settings.validate()?;
        Ok(settings)
    }

    pub fn connect(&self) -> anyhow::Result<Cluster> {
        Ok(Cluster::connect(&self.settings()?)?)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the component and index templates (idempotent; the listener also applies them at start).
    Setup {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Replicas per shard: 1 on a three-node cluster, 0 on a single node.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
        replicas: u32,
    },
    /// Indexing backlog and lag, dead letters, and documents per index against rows in PostgreSQL.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue every row within retention again (after an index was deleted or restored from an old
    /// snapshot); documents still in the cluster cost a duplicate and nothing else.
    Reindex {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Documents the cluster refused (mapping conflicts, rejected values), newest first.
    DeadLetters {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Queue the dead letters again, once their cause is fixed.
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Stop queueing documents for Elasticsearch and empty the queue, for a plant that no longer indexes
    /// (without an indexer the queue only grows). A listener started with `elastic.urls` switches indexing
    /// on again and queues everything within retention.
    Disable {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup { cluster, replicas } => {
            let client = cluster.connect()?;
            let info = client
                .info()
                .await
                .with_context(|| format!("reaching Elasticsearch at {}", cluster.urls.join(",")))?;
            println!(
                "cluster {} ({} {})",
                info["cluster_name"].as_str().unwrap_or("?"),
                info["version"]["distribution"]
                    .as_str()
                    .unwrap_or("elasticsearch"),
                info["version"]["number"].as_str().unwrap_or("?")
            );
            for applied in projection::apply_design(&client, replicas).await? {
                println!("applied {applied}");
            }
            Ok(())
        }
        Command::Status {
            database,
            cluster,
            json,
        } => status(&database, &cluster, json).await,
        Command::Reindex { database } => {
            let mut client = database::connect(&database.url).await?;
            let queued = auscult_store::refill_outbox(
                &mut client,
                &Retention::default().refill_windows(),
                SystemTime::now(),
            )
            .await?
            .unwrap_or(0);
            println!("queued {queued} documents; the listeners' indexers send them now");
            Ok(())
        }
        Command::DeadLetters { database, limit } => {
            let client = database::connect(&database.url).await?;
            let letters = auscult_store::list_dead_letters(&client, limit).await?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in letters {
                println!(
                    "{} {} {} → {}/{}: HTTP {} {}: {}",
                    humantime::format_rfc3339_seconds(letter.failed_at),
                    letter.kind,
                    letter.ref_id,
                    letter.refusal.index_name,
                    letter.refusal.document_id,
                    letter.refusal.status,
                    letter.refusal.error_type,
                    letter.refusal.reason
                );
            }
            Ok(())
        }
        Command::Replay { database } => {
            let mut client = database::connect(&database.url).await?;
            let moved = auscult_store::replay_dead_letters(&mut client).await?;
            println!("queued {moved} dead letters again");
            Ok(())
        }
        Command::Disable { database } => {
            let mut client = database::connect(&database.url).await?;
            let dropped = auscult_store::disable_indexing(&mut client).await?;
            println!(
                "indexing is off: writers queue nothing for Elasticsearch; {dropped} queued documents dropped"
            );
            Ok(())
        }
    }
}

async fn status(database: &DatabaseArgs, cluster: &ClusterArgs, json: bool) -> anyhow::Result<()> {
    let client = database::connect(&database.url).await?;
    let depth = auscult_store::outbox_depth(&client).await?;
    let indexing = auscult_store::indexing_enabled(&client).await?;
    let search = cluster.connect()?;
    let mut kinds = Vec::new();
    for kind in SearchKind::ALL {
        use auscult_search::design::KindLayout;
        let rows: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}", kind.source_table()),
                &[],
            )
            .await?
            .get(0);
        let documents = search_count(&search, kind.alias()).await;
        kinds.push(json!({"alias": kind.alias(), "rows": rows, "documents": documents}));
    }
    let summary = json!({
        "indexing": indexing,
        "backlog": depth.pending,
        "waiting_for_retry": depth.delayed,
        "lag_s": (depth.lag.as_secs_f64() * 1000.0).round() / 1000.0,
        "dead_letters": depth.dead_letters,
        "indices": kinds,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    if !indexing {
        println!(
            "indexing is off: nothing is queued (a listener with elastic.urls switches it on)"
        );
    }
    println!(
        "outbox: {} documents waiting ({} for a retry), oldest {:.1} s; {} dead letters",
        depth.pending,
        depth.delayed,
        depth.lag.as_secs_f64(),
        depth.dead_letters
    );
    for kind in summary["indices"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:>10} rows in PostgreSQL  {:>10} documents",
            kind["alias"].as_str().unwrap_or(""),
            kind["rows"],
            kind["documents"]
        );
    }
    Ok(())
}

/// Documents behind an alias, or `null` if it cannot be counted (no index yet, cluster down).
pub async fn search_count(cluster: &Cluster, alias: &str) -> serde_json::Value {
    match cluster
        .search(alias, &json!({"size": 0, "track_total_hits": true}))
        .await
    {
        Ok(answer) => answer["hits"]["total"]["value"].clone(),
        Err(_) => serde_json::Value::Null,
    }
}
