//! Typed settings: defaults, then an optional TOML file, then `AUSCULT__…` environment variables
//! (e.g. `AUSCULT__DATABASE__URL`, `AUSCULT__ANALYSIS__ENDPOINTS=http://a:50052,http://b:50052`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use auscult_settings::InvalidSetting;

/// Everything the listener can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// gRPC health and reflection.
    pub listen_addr: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    /// This replica's name in job leases; empty: host name and process id.
    pub instance: String,
    pub database: DatabaseSettings,
    pub analysis: AnalysisSettings,
    pub jobs: JobSettings,
    pub alerts: AlertSettings,
    pub health: HealthSettings,
    /// The Elasticsearch projection this listener keeps up to date (off while `elastic.urls` is empty).
    pub elastic: auscult_search::ElasticSettings,
    /// How long shutdown may take to finish the batches in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; list every host of a replicated cluster with `target_session_attrs=read-write`
    /// so that reconnecting finds the new primary after a failover. Never logged.
    pub url: String,
    pub pool_size: usize,
    /// Wait before reconnecting the notification connection, doubling up to 30 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisSettings {
    /// Analysis replicas. A host name that resolves to several addresses (a Kubernetes headless
    /// service) counts as one replica per address, re-resolved every `resolve_interval`.
    pub endpoints: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
    /// Deadline of one Score call.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Further tries of a call that failed for a reason retrying can fix, on another replica.
    pub retries: u32,
    /// First backoff between tries, doubling with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// How long a replica that failed is left out.
    #[serde(with = "humantime_serde")]
    pub eject_for: Duration,
    /// For `https://` endpoints: the PEM CA that signed the replicas' certificates (unset: the public
    /// roots). The host name of the endpoint is what the certificate must be issued for.
    pub ca_path: Option<PathBuf>,
    /// A client certificate and its key (PEM), for replicas that require mutual TLS.
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// A file holding the shared credential sent as `authorization: Bearer <secret>` (analysis's
    /// `auth.credential_file`).
    pub credential_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Jobs claimed at once.
    pub batch: i64,
    /// Batches worked on at once.
    pub concurrency: usize,
    /// A claimed job returns to the queue if its listener stops renewing it for this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts before a job goes to `dead`.
    pub max_attempts: i32,
    /// Rounds a job may fail while no analysis replica answers at all (an outage, not the frame's fault)
    /// before such a round counts as an attempt: a frame that takes every replica down with it looks the
    /// same, and must still end.
    pub max_outage_retries: i32,
    /// Wait after a failed attempt, doubling per attempt, at most a minute.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// The queue is swept this often even without notifications.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Earlier frames of the same sensor sent with each frame, so that it is judged as a clip.
    pub history_frames: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// An alert fires when `fire_at` of a sensor's last `window` verdicts are anomalous…
    pub fire_at: i64,
    pub window: i64,
    /// …and resolves when at most `clear_at` of them are.
    pub clear_at: i64,
    /// URLs that receive every alert event as a JSON POST.
    pub webhooks: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Deliveries of one event are given up after this many attempts.
    pub max_delivery_attempts: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A sensor is silent after this many of its usual intervals without a frame…
    pub silent_after_intervals: f64,
    /// …and never sooner than this.
    #[serde(with = "humantime_serde")]
    pub min_silence: Duration,
    /// A recent frame rate this many times faster or slower than usual is reported.
    pub rate_ratio: f64,
    /// Frames a sensor must have sent before its rate is judged.
    pub min_frames: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50053)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9466)),
            instance: String::new(),
            database: DatabaseSettings::default(),
            analysis: AnalysisSettings::default(),
            jobs: JobSettings::default(),
            alerts: AlertSettings::default(),
            health: HealthSettings::default(),
            elastic: auscult_search::ElasticSettings::default(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/auscult".into(),
            pool_size: 8,
            reconnect_backoff: Duration::from_millis(200),
        }
    }
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:50052".into()],
            resolve_interval: Duration::from_secs(10),
            deadline: Duration::from_secs(5),
            retries: 4,
            backoff: Duration::from_millis(100),
            eject_for: Duration::from_secs(2),
            ca_path: None,
            cert_path: None,
            key_path: None,
            credential_file: None,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            batch: 64,
            concurrency: 2,
            lease: Duration::from_secs(30),
            max_attempts: 5,
            max_outage_retries: 30,
            retry_backoff: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(5),
            history_frames: 9,
        }
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        let rule = auscult_store::AlertRule::default();
        Self {
            fire_at: rule.fire_at,
            window: rule.window,
            clear_at: rule.clear_at,
            webhooks: Vec::new(),
            webhook_timeout: Duration::from_secs(5),
            max_delivery_attempts: 20,
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        let rule = auscult_store::HealthRule::default();
        Self {
            check_interval: Duration::from_secs(5),
            silent_after_intervals: rule.silent_after_intervals,
            min_silence: rule.min_silence,
            rate_ratio: rule.rate_ratio,
            min_frames: rule.min_frames,
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    /// An empty list variable (`AUSCULT__ALERTS__WEBHOOKS=`, as deploy files write an unset option)
    /// means an empty list, not one empty entry.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, auscult_settings::ConfigError> {
        let mut settings: Self = auscult_settings::load(file)?;
        for list in [
            &mut settings.analysis.endpoints,
            &mut settings.alerts.webhooks,
            &mut settings.elastic.urls,
        ] {
            list.retain(|entry| !entry.trim().is_empty());
        }
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.elastic.validate()?;
        let fail = |key, problem: &str| Err(InvalidSetting::new(key, problem));
        if self.analysis.endpoints.is_empty() {
            return fail("analysis.endpoints", "name at least one analysis replica");
        }
        if let Some(bad) = self.analysis.endpoints.iter().find(|e| {
            e.parse::<tonic::transport::Uri>()
                .map_or(true, |u| u.host().is_none())
        }) {
            return Err(InvalidSetting::new(
                "analysis.endpoints",
                format!("{bad:?} is not a URL like http://host:50052"),
            ));
        }
        if self.analysis.deadline < Duration::from_millis(10) {
            return fail("analysis.deadline", "must be at least 10ms");
        }
        if !(1..=256).contains(&self.jobs.batch) {
            return fail(
                "jobs.batch",
                "must be between 1 and 256 (one Score request)",
            );
        }
        if !(1..=64).contains(&self.jobs.concurrency) {
            return fail("jobs.concurrency", "must be between 1 and 64");
        }
        if self.jobs.lease < Duration::from_secs(1) {
            return fail("jobs.lease", "must be at least 1s");
        }
        if self.jobs.lease <= self.analysis.deadline {
            return fail(
                "jobs.lease",
                "must be longer than analysis.deadline, or jobs are lost to other listeners mid-call",
            );
        }
        if !(1..=100).contains(&self.jobs.max_attempts) {
            return fail("jobs.max_attempts", "must be between 1 and 100");
        }
        if !(0..=1000).contains(&self.jobs.max_outage_retries) {
            return fail("jobs.max_outage_retries", "must be between 0 and 1000");
        }
        if self.jobs.sweep_interval < Duration::from_millis(50) {
            return fail("jobs.sweep_interval", "must be at least 50ms");
        }
        if !(0..=60).contains(&self.jobs.history_frames) {
            return fail("jobs.history_frames", "must be between 0 and 60");
        }
        // Every verdict judged reads the sensor's last `window` verdicts: an hour of them at most.
        if !(1..=3600).contains(&self.alerts.window) {
            return fail("alerts.window", "must be between 1 and 3600");
        }
        if !(1..=self.alerts.window).contains(&self.alerts.fire_at) {
            return fail("alerts.fire_at", "must be between 1 and alerts.window");
        }
        if self.alerts.clear_at < 0 || self.alerts.clear_at >= self.alerts.fire_at {
            return fail(
                "alerts.clear_at",
                "must be at least 0 and below alerts.fire_at",
            );
        }
        if let Some(bad) = self.alerts.webhooks.iter().find(|w| {
            reqwest::Url::parse(w).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        }) {
            return Err(InvalidSetting::new(
                "alerts.webhooks",
                format!("{bad:?} is not an http(s) URL"),
            ));
        }
        if self.health.silent_after_intervals < 1.0 || self.health.rate_ratio <= 1.0 {
            return fail(
                "health.silent_after_intervals",
                "silent_after_intervals must be at least 1 and rate_ratio above 1",
            );
        }
        let indexer_connections = if self.elastic.enabled() {
            self.elastic.concurrency + 1
        } else {
            0
        };
        if self.database.pool_size < self.jobs.concurrency + 2 + indexer_connections {
            return fail(
                "database.pool_size",
                "must be at least jobs.concurrency + 2, plus elastic.concurrency + 1 when indexing (each batch, \
                 the alert sender, the health watcher, each indexing round and its housekeeping hold one)",
            );
        }
        Ok(())
    }

    /// The name this replica leases jobs under.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .unwrap_or_else(|| "listener".into());
        format!("{host}-{}", std::process::id())
    }

    pub fn alert_rule(&self) -> auscult_store::AlertRule {
        auscult_store::AlertRule {
            fire_at: self.alerts.fire_at,
            window: self.alerts.window,
            clear_at: self.alerts.clear_at,
        }
    }

    pub fn health_rule(&self) -> auscult_store::HealthRule {
        auscult_store::HealthRule {
            silent_after_intervals: self.health.silent_after_intervals,
            min_silence: self.health.min_silence,
            rate_ratio: self.health.rate_ratio,
            min_frames: self.health.min_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Settings::default().validate().expect("defaults");
        let mut settings = Settings::default();
        settings.alerts.fire_at = 9;
        assert_eq!(
            settings.validate().map_err(|e| e.key).err(),
            Some("alerts.fire_at")
        );
        let mut settings = Settings::default();
        settings.analysis.endpoints = vec!["not a url".into()];
        assert_eq!(
            settings.validate().map_err(|e| e.key).err(),
            Some("analysis.endpoints")
        );
        let mut settings = Settings::default();
        settings.jobs.lease = settings.analysis.deadline;
        assert_eq!(
            settings.validate().map_err(|e| e.key).err(),
            Some("jobs.lease")
        );
    }

    #[test]
    fn empty_list_entries_are_dropped() {
        let file =
            std::env::temp_dir().join(format!("auscult-listener-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "[alerts]\nwebhooks = [\"\", \"https://hooks.example/a\"]\n[elastic]\nurls = [\" \"]\n",
        )
        .expect("write settings");
        let settings = Settings::load(Some(&file));
        let _ = std::fs::remove_file(&file);
        let settings = settings.expect("load");
        assert_eq!(settings.alerts.webhooks, ["https://hooks.example/a"]);
        assert!(settings.elastic.urls.is_empty());
        settings.validate().expect("valid");
    }
}
