//! The Elasticsearch projection of PostgreSQL: what operators search and chart in Kibana.
//! PostgreSQL stays the source of truth; this crate keeps the cluster converging to it.
//!
//! - [`design`]: index names, the templates under `deploy/elasticsearch/`, retention by month;
//! - [`Cluster`]: the few Elasticsearch calls made, over the official `elasticsearch` crate;
//! - [`Indexer`]: drains the search outbox with `_bulk`, per-document retries and dead letters;
//! - [`projection`]: applying the design, noticing a cluster that lost the projection, pruning.

mod cluster;
pub mod design;
mod indexer;
pub mod kibana;
pub mod projection;
mod settings;

pub use cluster::{
    Backoff, BulkDocument, Cluster, ClusterError, ItemOutcome, is_retryable_status, retry_delay,
};
pub use indexer::{Indexer, IndexerError, Round};
pub use settings::{ElasticSettings, Retention};
