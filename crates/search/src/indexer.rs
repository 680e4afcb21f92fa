//! The indexer: drains the search outbox into Elasticsearch. Any number run at once (a few tasks per
//! listener replica); `FOR UPDATE SKIP LOCKED` gives each its own rows.
//!
//! One round: make sure the cluster holds the projection, claim a batch of due rows for a lease (committed
//! at once: no transaction or row lock is held while the documents travel), read their documents as
//! PostgreSQL holds them now, send them in one `_bulk`, and settle every row by its own outcome under the
//! claim's token — indexed or already there (409): gone; 429 or 5xx: pushed back with backoff, alone; 400
//! or 404: to the dead letters with the reason. If the whole request fails (cluster unreachable,
//! overloaded), the rows are given back and the round is retried after a pause; if the indexer dies, they
//! are due again when the lease ends, and documents sent twice are absorbed by their versions (409).
//! Ingest never waits on any of this: it only inserted the rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge, histogram};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use auscult_store::{
    OutboxEntry, Pool, Refusal, Settlement, StoreError, claim_outbox, load_documents, outbox_depth,
    refill_outbox, release_outbox, settle_outbox,
};

use crate::{
    BulkDocument, Cluster, ClusterError, ElasticSettings, ItemOutcome,
    cluster::{Backoff, retry_delay},
    design::KindLayout,
    projection::{ProjectionState, apply_design, projection_state, prune, write_marker},
};

/// Why a round of indexing failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the cluster holds another auscult database's projection ({0}); give each installation its own cluster"
    )]
    ForeignProjection(String),
}

impl From<tokio_postgres::Error> for IndexerError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

impl From<auscult_store::PoolError> for IndexerError {
    fn from(e: auscult_store::PoolError) -> Self {
        Self::Store(StoreError::Pool(e))
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Documents Elasticsearch now holds (created, or found there already).
    pub indexed: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    /// Rows whose source row no longer exists.
    pub vanished: usize,
    /// Claimed rows left for the next round because the body was full.
    pub deferred: usize,
}

impl Round {
    /// Whether more rows are probably waiting.
    pub fn was_full(&self, batch_documents: usize) -> bool {
        self.claimed >= batch_documents || self.deferred > 0
    }
}

/// Drains the outbox into one cluster.
#[derive(Debug)]
pub struct Indexer {
    settings: ElasticSettings,
    cluster: Cluster,
    pool: Pool,
    /// Read from PostgreSQL on first use, so that the indexer starts while the database is away.
    projection_id: tokio::sync::OnceCell<String>,
    design_applied: AtomicBool,
    /// Whether this process has switched indexing on in PostgreSQL (see [`auscult_store::enable_indexing`]).
    indexing_on: AtomicBool,
    /// One projection check-and-refill at a time in this process.
    projection_guard: tokio::sync::Mutex<()>,
}

impl Indexer {
    pub fn new(settings: ElasticSettings, pool: Pool) -> Result<Self, IndexerError> {
        let cluster = Cluster::connect(&settings)?;
        Ok(Self {
            settings,
            cluster,
            pool,
            projection_id: tokio::sync::OnceCell::new(),
            design_applied: AtomicBool::new(false),
            indexing_on: AtomicBool::new(false),
            projection_guard: tokio::sync::Mutex::new(()),
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Runs `settings.concurrency` drain tasks and the housekeeping (metrics, retention) until
    /// `shutdown`; a round in flight finishes or rolls back.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..self.settings.concurrency {
            let indexer = Arc::clone(&self);
            let shutdown = shutdown.clone();
            tasks.spawn(
                async move { indexer.drain(shutdown).await }
                    .instrument(info_span!("indexer", task)),
            );
        }
        let indexer = Arc::clone(&self);
        tasks.spawn(async move { indexer.housekeeping(shutdown).await });
        while tasks.join_next().await.is_some() {}
    }

    /// Rounds until shutdown: straight on while rows wait, every `poll_interval` when idle, with a
    /// growing pause after failures.
    async fn drain(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        loop {
            let pause = match self.round().await {
                Ok(round) => {
                    backoff.reset();
                    if round.was_full(self.settings.batch_documents) {
                        continue;
                    }
                    self.settings.poll_interval
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    counter!("auscult_search_round_failures_total", "reason" => failure_reason(&error))
                        .increment(1);
                    warn!(%error, retry_in = ?delay, "indexing round failed; the outbox keeps the documents");
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One round (see the module docs).
    pub async fn round(&self) -> Result<Round, IndexerError> {
        self.ensure_projection().await?;
        let mut client = self.pool.get().await?;
        let limit = i64::try_from(self.settings.batch_documents).unwrap_or(i64::MAX);
        // Long enough for the slowest request the cluster may take, and the settling after it.
        let lease = self.settings.request_timeout * 2 + Duration::from_secs(10);
        let claim = claim_outbox(&**client, limit, lease).await?;
        let (token, entries) = (claim.token, claim.entries);
        let mut round = Round {
            claimed: entries.len(),
            ..Round::default()
        };
        if entries.is_empty() {
            return Ok(round);
        }
        let span = info_span!("bulk", claimed = entries.len());
        async {
            let documents = load_documents(&**client, &entries).await?;
            let now = SystemTime::now();
            let mut batch: Vec<(&OutboxEntry, BulkDocument)> = Vec::with_capacity(documents.len());
            let mut bytes = 0;
            let mut settlements: Vec<(i64, Settlement)> = Vec::with_capacity(entries.len());
            let mut has_document = std::collections::HashSet::with_capacity(documents.len());
            let mut deferred = Vec::new();
            for document in documents {
                has_document.insert(document.outbox_id);
                let Some(entry) = entries.iter().find(|e| e.id == document.outbox_id) else {
                    continue;
                };
                let mut body = document.body;
                let lag = now.duration_since(entry.queued_at).unwrap_or_default();
                body.insert("queued_at".into(), json!(rfc3339(entry.queued_at)));
                body.insert("indexed_at".into(), json!(rfc3339(now)));
                body.insert("index_lag_ms".into(), json!(lag.as_secs_f64() * 1000.0));
                let bulk_document = BulkDocument {
                    index: entry.kind.index_for(&document.month),
                    id: document.document_id,
                    version: document.version,
                    body: serde_json::Value::Object(body).to_string().into_bytes(),
                };
                let size = bulk_document.encoded_len();
                // What does not fit in this request's body is given back for the next round.
                if !batch.is_empty() && bytes + size > self.settings.batch_bytes {
                    round.deferred += 1;
                    deferred.push(entry.id);
                    continue;
                }
                bytes += size;
                batch.push((entry, bulk_document));
            }
            for entry in &entries {
                if !has_document.contains(&entry.id) {
                    round.vanished += 1;
                    counter!("auscult_search_documents_total", "kind" => entry.kind.as_str(), "outcome" => "vanished")
                        .increment(1);
                    settlements.push((entry.id, Settlement::Done));
                }
            }
            if !batch.is_empty() {
                let documents: Vec<BulkDocument> = batch.iter().map(|(_, d)| d.clone()).collect();
                let started = Instant::now();
                let outcomes = match self.cluster.bulk(&documents).await {
                    Ok(outcomes) => outcomes,
                    Err(error) => {
                        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
                        if let Err(e) = release_outbox(&**client, token, &ids).await {
                            // They come back by themselves when the lease ends.
                            warn!("cannot give claimed outbox rows back: {e}");
                        }
                        return Err(error.into());
                    }
                };
                histogram!("auscult_search_bulk_seconds").record(started.elapsed().as_secs_f64());
                histogram!("auscult_search_bulk_documents").record(documents.len() as f64);
                let acknowledged = SystemTime::now();
                for ((entry, document), outcome) in batch.iter().zip(outcomes) {
                    let kind = entry.kind.as_str();
                    let settlement = match outcome {
                        ItemOutcome::Created | ItemOutcome::Duplicate => {
                            let label = if outcome == ItemOutcome::Created { "created" } else { "duplicate" };
                            counter!("auscult_search_documents_total", "kind" => kind, "outcome" => label)
                                .increment(1);
                            histogram!("auscult_search_index_delay_seconds", "kind" => kind).record(
                                acknowledged
                                    .duration_since(entry.queued_at)
                                    .unwrap_or_default()
                                    .as_secs_f64(),
                            );
                            round.indexed += 1;
                            Settlement::Done
                        }
                        ItemOutcome::Retry { status, reason } => {
                            counter!("auscult_search_documents_total", "kind" => kind, "outcome" => "retried")
                                .increment(1);
                            round.retried += 1;
                            Settlement::Retry {
                                error: format!("HTTP {status}: {reason}"),
                                after: retry_delay(
                                    self.settings.retry_min,
                                    self.settings.retry_max,
                                    entry.attempts,
                                ),
                            }
                        }
                        ItemOutcome::Refused { status, error_type, reason } => {
                            counter!("auscult_search_documents_total", "kind" => kind, "outcome" => "dead_lettered")
                                .increment(1);
                            warn!(index = %document.index, id = %document.id, status, %error_type, %reason,
                                  "document refused; kept in search_dead_letters");
                            round.dead_lettered += 1;
                            Settlement::Dead(Refusal {
                                index_name: document.index.clone(),
                                document_id: document.id.clone(),
                                status: i32::from(status),
                                error_type,
                                reason,
                            })
                        }
                    };
                    settlements.push((entry.id, settlement));
                }
            }
            settle_outbox(&mut client, token, &settlements).await?;
            if !deferred.is_empty() {
                release_outbox(&**client, token, &deferred).await?;
            }
            Ok::<_, IndexerError>(())
        }
        .instrument(span)
        .await?;
        Ok(round)
    }

    /// Applies the design once per process, then checks the marker; a cluster without it is given
    /// the design again and refilled from PostgreSQL before anything else is sent.
    async fn ensure_projection(&self) -> Result<(), IndexerError> {
        let _guard = self.projection_guard.lock().await;
        let applied_now = !self.design_applied.load(Ordering::Acquire);
        if applied_now {
            apply_design(&self.cluster, self.settings.replicas).await?;
            self.design_applied.store(true, Ordering::Release);
        }
        if !self.indexing_on.load(Ordering::Acquire) {
            // Writers queue documents only while indexing is on. If it was off, nothing written meanwhile
            // was queued: everything within retention is queued now, whatever the cluster holds.
            let mut client = self.pool.get().await?;
            let noticed_at = SystemTime::now();
            if auscult_store::enable_indexing(&**client).await? {
                let queued = refill_outbox(
                    &mut client,
                    &self.settings.retention.refill_windows(),
                    noticed_at,
                )
                .await?;
                info!(
                    queued = queued.unwrap_or(0),
                    "indexing switched on: everything within retention is queued"
                );
            }
            self.indexing_on.store(true, Ordering::Release);
        }
        let projection_id = self
            .projection_id
            .get_or_try_init(|| async {
                let client = self.pool.get().await?;
                Ok::<_, IndexerError>(auscult_store::projection_id(&**client).await?)
            })
            .await?;
        match projection_state(&self.cluster, projection_id).await? {
            ProjectionState::Present => Ok(()),
            ProjectionState::Foreign(other) => Err(IndexerError::ForeignProjection(other)),
            ProjectionState::Missing => {
                let noticed_at = SystemTime::now();
                if !applied_now {
                    apply_design(&self.cluster, self.settings.replicas).await?;
                }
                let mut client = self.pool.get().await?;
                let queued = refill_outbox(
                    &mut client,
                    &self.settings.retention.refill_windows(),
                    noticed_at,
                )
                .await?;
                write_marker(&self.cluster, projection_id).await?;
                counter!("auscult_search_refills_total").increment(1);
                match queued {
                    Some(queued) => info!(
                        queued,
                        "the cluster lacked this database's projection: everything within retention is queued again"
                    ),
                    None => info!(
                        "the cluster lacked the projection; another indexer already refilled it"
                    ),
                }
                Ok(())
            }
        }
    }

    /// Publishes the outbox's depth and lag every few seconds, and deletes indices past retention.
    async fn housekeeping(&self, shutdown: CancellationToken) {
        let mut metrics = tokio::time::interval(Duration::from_secs(5));
        let mut retention = tokio::time::interval(self.settings.prune_interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = metrics.tick() => {
                    let depth = match self.pool.get().await {
                        Ok(client) => outbox_depth(&**client).await,
                        Err(e) => Err(StoreError::Pool(e)),
                    };
                    match depth {
                        Ok(depth) => {
                            gauge!("auscult_search_backlog_documents").set(depth.pending as f64);
                            gauge!("auscult_search_delayed_documents").set(depth.delayed as f64);
                            gauge!("auscult_search_lag_seconds").set(depth.lag.as_secs_f64());
                            gauge!("auscult_search_dead_letters").set(depth.dead_letters as f64);
                        }
                        Err(error) => warn!(%error, "reading the search outbox depth failed"),
                    }
                }
                _ = retention.tick() => {
                    if let Err(error) = prune(&self.cluster, &self.settings.retention, SystemTime::now()).await {
                        warn!(%error, "deleting indices past retention failed; trying again later");
                    }
                }
            }
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn failure_reason(error: &IndexerError) -> &'static str {
    match error {
        IndexerError::Store(_) => "database",
        IndexerError::Cluster(ClusterError::Unreachable { .. }) => "unreachable",
        IndexerError::Cluster(ClusterError::Status { status: 429, .. }) => "overloaded",
        IndexerError::Cluster(e) if e.is_transient() => "server_error",
        IndexerError::Cluster(_) => "refused",
        IndexerError::ForeignProjection(_) => "foreign_projection",
    }
}
