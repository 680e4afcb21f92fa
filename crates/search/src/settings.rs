//! How the indexer reaches Elasticsearch and how hard it may push: the `[elastic]` section of the
//! listener's settings, also filled from the command line by `auscult`.

use std::time::Duration;

use serde::Deserialize;

use auscult_settings::InvalidSetting;
use auscult_store::{RefillWindow, SearchKind};

/// Elasticsearch connection, batching, retries and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticSettings {
    /// Nodes of the cluster (`https://es-0:9200,…`); empty: no projection, the outbox only grows.
    pub urls: Vec<String>,
    /// Basic authentication (Elasticsearch security); never logged.
    pub username: String,
    pub password: String,
    /// An API key (`id:key` base64-encoded, as Kibana shows it) instead of a user; never logged.
    pub api_key: String,
    /// A CA certificate (PEM) that signed the cluster's HTTPS certificate, for clusters with their own
    /// CA (ECK and Elasticsearch's own set-up create one); unset: the usual public roots.
    pub ca_path: Option<std::path::PathBuf>,
    /// Deadline of one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest number of documents in one `_bulk`.
    pub batch_documents: usize,
    /// Largest `_bulk` body; Elasticsearch refuses bodies over 100 MB.
    pub batch_bytes: usize,
    /// `_bulk` requests in flight at once from this process.
    pub concurrency: usize,
    /// How often an idle indexer looks for new rows.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// First wait before resending a document (or retrying an unreachable cluster), doubling up to
    /// `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Replicas of each index's shard: 1 on a three-node cluster, 0 on a single node.
    pub replicas: u32,
    /// How long documents stay searchable; older monthly indices are deleted.
    pub retention: Retention,
    /// How often old indices are looked for.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
}

impl Default for ElasticSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            username: String::new(),
            password: String::new(),
            api_key: String::new(),
            ca_path: None,
            request_timeout: Duration::from_secs(30),
            batch_documents: 1000,
            batch_bytes: 5 * 1024 * 1024,
            concurrency: 2,
            poll_interval: Duration::from_millis(250),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            replicas: 1,
            retention: Retention::default(),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// Retention per kind of document.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    #[serde(with = "humantime_serde")]
    pub frames: Duration,
    #[serde(with = "humantime_serde")]
    pub results: Duration,
    #[serde(with = "humantime_serde")]
    pub alerts: Duration,
    #[serde(with = "humantime_serde")]
    pub health: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            frames: Duration::from_secs(30 * DAY),
            results: Duration::from_secs(180 * DAY),
            alerts: Duration::from_secs(730 * DAY),
            health: Duration::from_secs(365 * DAY),
        }
    }
}

impl Retention {
    pub fn of(&self, kind: SearchKind) -> Duration {
        match kind {
            SearchKind::Frame => self.frames,
            SearchKind::Result => self.results,
            SearchKind::Alert => self.alerts,
            SearchKind::Health => self.health,
        }
    }

    /// What a refill of a cluster that lost the projection reaches back to.
    pub fn refill_windows(&self) -> Vec<RefillWindow> {
        SearchKind::ALL
            .into_iter()
            .map(|kind| RefillWindow {
                kind,
                retention: self.of(kind),
            })
            .collect()
    }
}

impl ElasticSettings {
    /// Whether a cluster is configured at all.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Checks every value, naming the offending key (`elastic.batch_bytes`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key, problem: &str| Err(InvalidSetting::new(key, problem));
        for url in &self.urls {
            match elasticsearch::http::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return invalid("elastic.urls", &format!("{url:?} is not an http(s) URL")),
            }
        }
        if !self.api_key.is_empty() && !self.username.is_empty() {
            return invalid(
                "elastic.api_key",
                "set either api_key or username/password, not both",
            );
        }
        if self.username.is_empty() != self.password.is_empty() {
            return invalid("elastic.password", "username and password go together");
        }
        if !(1..=10_000).contains(&self.batch_documents) {
            return invalid("elastic.batch_documents", "must be 1..=10000");
        }
        if !(64 * 1024..=100 * 1024 * 1024).contains(&self.batch_bytes) {
            return invalid("elastic.batch_bytes", "must be 64 KiB..=100 MiB");
        }
        if !(1..=64).contains(&self.concurrency) {
            return invalid("elastic.concurrency", "must be 1..=64");
        }
        if self.request_timeout < Duration::from_millis(100) {
            return invalid("elastic.request_timeout", "must be at least 100ms");
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(60)
        {
            return invalid("elastic.poll_interval", "must be 10ms..=60s");
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return invalid(
                "elastic.retry_max",
                "retry_min must be positive and retry_max at least retry_min",
            );
        }
        if self.replicas > 10 {
            return invalid("elastic.replicas", "must be 0..=10");
        }
        for kind in SearchKind::ALL {
            if self.retention.of(kind) < Duration::from_secs(24 * 3600) {
                return invalid(
                    "elastic.retention",
                    "every retention must be at least 1 day",
                );
            }
        }
        if self.prune_interval < Duration::from_secs(1) {
            return invalid("elastic.prune_interval", "must be at least 1s");
        }
        Ok(())
    }
}
