//! Typed settings: defaults, then an optional TOML file, then `AUSCULT__…` environment variables
//! (e.g. `AUSCULT__DATABASE__URL`, `AUSCULT__BATCH__MAX_FRAMES`). Validated at start so that a bad value fails
//! fast with the name of its key.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

pub use auscult_settings::InvalidSetting;

/// Everything the ingest service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where gateways connect (gRPC).
    pub listen_addr: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub batch: BatchSettings,
    pub limits: LimitSettings,
    pub flow: FlowSettings,
    pub devices: DeviceSettings,
    pub auth: AuthSettings,
    pub tls: Option<TlsSettings>,
    pub storage: StorageSettings,
    pub lifecycle: LifecycleSettings,
    /// How long shutdown may take to commit and acknowledge in-flight frames before giving up on them (they are
    /// not lost: unacknowledged frames are resent by their gateways).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL. Never logged: it may hold a password.
    pub url: String,
    /// Connections in the pool: the writers' plus a few for authentication and health checks.
    pub pool_size: usize,
}

/// When a batch is committed: whichever bound is reached first.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    pub max_frames: usize,
    pub max_bytes: usize,
    /// How long the first frame of a batch may wait for company: the floor of acknowledgement latency.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Transactions in flight at once: while one waits for its commit to reach disk, the next one is built.
    pub writers: usize,
    /// Longest wait for a batch's transaction, COMMIT included. A COMMIT can wait far longer than any
    /// statement timeout — for a synchronous standby that is gone, or a primary that vanished — so past
    /// this the batch is reported failed (its gateways resend; deduplication absorbs what did commit) and
    /// its connection is discarded.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// How far in the future a frame's capture time may be.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// How old a frame may be (gateways send late after outages).
    #[serde(with = "humantime_serde")]
    pub max_frame_age: Duration,
    /// A gateway whose clock (each frame's `sent_at`) is further than this from ingest's is flagged.
    #[serde(with = "humantime_serde")]
    pub clock_offset_warning: Duration,
}

/// Bounds on memory held by frames that are received but not yet committed. When a bound is reached, ingest
/// stops reading from the stream, and HTTP/2 flow control slows the gateway down.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowSettings {
    /// Across all streams.
    pub max_inflight_bytes: usize,
    /// Per stream, so that one fast gateway cannot take the whole budget.
    pub max_stream_inflight_bytes: usize,
    /// Concurrent streams per connection.
    pub max_streams_per_connection: u32,
    /// Open connections; a connection beyond it is closed as soon as it is accepted. With the windows
    /// below, this bounds what HTTP/2 buffers: `max_connections × connection_window_bytes`.
    pub max_connections: u32,
    /// HTTP/2 flow-control window of a connection: bytes a gateway may send that ingest has not read yet.
    pub connection_window_bytes: u32,
    /// HTTP/2 flow-control window of one stream.
    pub stream_window_bytes: u32,
}

/// What one device may take of one replica, so that a flooding or misbehaving device slows only itself.
/// A device over its rate is paced, not refused: its streams are read no faster than the rate, HTTP/2 flow
/// control holds the gateway back, and nothing it sent is lost or has to be resent.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSettings {
    /// Streams one device may have open at once; one more is refused (RESOURCE_EXHAUSTED).
    pub max_streams: u32,
    /// Frames per second one device may send, over all its streams; 0 for no cap.
    pub max_frames_per_second: u32,
    /// Bytes of samples per second one device may send, over all its streams; 0 for no cap.
    pub max_bytes_per_second: u64,
    /// How far ahead of its rates a device may run: a burst of this much time's worth is read at once.
    #[serde(with = "humantime_serde")]
    pub burst: Duration,
}

/// Authentication of new streams, on its own connections so that it neither waits behind the writers nor
/// takes connections from them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Connections kept for authenticating new streams and re-checking open streams' tokens.
    pub pool_size: usize,
    /// How long a new stream waits for one of those connections before it is refused (UNAVAILABLE).
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// How often the tokens of open streams are checked again: a revoked token's streams end within it.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: Duration,
}

/// How frames are stored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    pub audio: AudioStorage,
}

/// The form 16-bit PCM samples are stored in (32-bit float frames are always stored as received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioStorage {
    /// Lossless FLAC, one stream per frame: about half the disk and WAL on machine sound, for about a
    /// third of a millisecond of CPU per second of audio. Analysis replicas must be of a release that
    /// decodes it (this one or later).
    #[default]
    Flac,
    /// As received.
    Pcm,
}

/// Partitions and retention of the data in PostgreSQL. Every replica runs the passes; one runs at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Run lifecycle passes. Turn off only where something else runs them (`auscult retention run` from a
    /// scheduled job): without passes, partitions run out `retention.partitions_ahead` after the last one.
    pub enabled: bool,
    /// Time between passes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub retention: auscult_store::RetentionPolicy,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            retention: auscult_store::RetentionPolicy::default(),
        }
    }
}

/// Serve TLS; with `client_ca_path`, also require client certificates signed by that CA (mutual TLS).
pub type TlsSettings = auscult_settings::ServerTls;

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9464)),
            database: DatabaseSettings::default(),
            batch: BatchSettings::default(),
            limits: LimitSettings::default(),
            flow: FlowSettings::default(),
            devices: DeviceSettings::default(),
            auth: AuthSettings::default(),
            tls: None,
            storage: StorageSettings::default(),
            lifecycle: LifecycleSettings::default(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/auscult".into(),
            pool_size: 10,
        }
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_frames: 128,
            max_bytes: 4 << 20,
            max_delay: Duration::from_millis(5),
            writers: 4,
            commit_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        let frame = auscult_frame::Limits::default();
        Self {
            max_message_bytes: 1 << 20,
            max_clock_skew: frame.max_clock_skew,
            max_frame_age: frame.max_frame_age,
            clock_offset_warning: Duration::from_secs(5),
        }
    }
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            max_inflight_bytes: 256 << 20,
            max_stream_inflight_bytes: 16 << 20,
            max_streams_per_connection: 64,
            // 1,024 connections × 256 KiB: at most 256 MiB buffered by HTTP/2. 256 KiB is eight 32 KB
            // frames in flight per connection, about 2.6 MB/s over an LTE round trip of 100 ms.
            max_connections: 1024,
            connection_window_bytes: 256 << 10,
            stream_window_bytes: 128 << 10,
        }
    }
}

impl Default for DeviceSettings {
    fn default() -> Self {
        // A gateway of 16 microphones sends 16 one-second frames a second; the caps let it catch up after
        // an outage at about 15 times that, in 16 kHz 16-bit audio (500 frames/s of 32 KB).
        Self {
            max_streams: 8,
            max_frames_per_second: 250,
            max_bytes_per_second: 16 << 20,
            burst: Duration::from_secs(2),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            pool_size: 2,
            wait: Duration::from_secs(2),
            recheck_interval: Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, auscult_settings::ConfigError> {
        auscult_settings::load(file)
    }

    /// Checks relations between settings that types cannot express.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let fail = |key, problem: String| Err(InvalidSetting { key, problem });
        if self.batch.max_frames == 0 {
            return fail("batch.max_frames", "must be at least 1".into());
        }
        if self.batch.writers == 0 {
            return fail("batch.writers", "must be at least 1".into());
        }
        if self.batch.commit_timeout < Duration::from_millis(100) {
            return fail("batch.commit_timeout", "must be at least 100ms".into());
        }
        if self.database.pool_size <= self.batch.writers {
            return fail(
                "database.pool_size",
                format!(
                    "must exceed batch.writers ({}) to leave a connection for the readiness check",
                    self.batch.writers
                ),
            );
        }
        if !(1..=16).contains(&self.auth.pool_size) {
            return fail("auth.pool_size", "must be between 1 and 16".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(30)).contains(&self.auth.wait) {
            return fail("auth.wait", "must be between 100ms and 30s".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600))
            .contains(&self.auth.recheck_interval)
        {
            return fail("auth.recheck_interval", "must be between 1s and 10m".into());
        }
        if self.devices.max_streams == 0 {
            return fail("devices.max_streams", "must be at least 1".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.devices.burst) {
            return fail("devices.burst", "must be between 100ms and 60s".into());
        }
        let window = 65_535..=(64 << 20);
        if !window.contains(&self.flow.connection_window_bytes) {
            return fail(
                "flow.connection_window_bytes",
                "must be between 65535 (HTTP/2's initial window) and 64 MiB".into(),
            );
        }
        if !window.contains(&self.flow.stream_window_bytes)
            || self.flow.stream_window_bytes > self.flow.connection_window_bytes
        {
            return fail(
                "flow.stream_window_bytes",
                "must be between 65535 and flow.connection_window_bytes".into(),
            );
        }
        if self.flow.max_connections == 0 {
            return fail("flow.max_connections", "must be at least 1".into());
        }
        if !(1024..=64 << 20).contains(&self.limits.max_message_bytes) {
            return fail(
                "limits.max_message_bytes",
                "must be between 1 KiB and 64 MiB".into(),
            );
        }
        if self.flow.max_stream_inflight_bytes < self.limits.max_message_bytes {
            return fail(
                "flow.max_stream_inflight_bytes",
                "must be at least limits.max_message_bytes".into(),
            );
        }
        if self.flow.max_inflight_bytes < self.flow.max_stream_inflight_bytes {
            return fail(
                "flow.max_inflight_bytes",
                "must be at least flow.max_stream_inflight_bytes".into(),
            );
        }
        if u32::try_from(self.flow.max_inflight_bytes).is_err() {
            return fail("flow.max_inflight_bytes", "must be below 4 GiB".into());
        }
        let lifecycle = &self.lifecycle;
        if let Err(e) = lifecycle.retention.validate() {
            return fail("lifecycle.retention", e.to_string());
        }
        if !(Duration::from_secs(10)..=lifecycle.retention.partitions_ahead / 2)
            .contains(&lifecycle.interval)
        {
            return fail(
                "lifecycle.interval",
                "must be between 10s and half of lifecycle.retention.partitions_ahead".into(),
            );
        }
        if self.limits.clock_offset_warning < Duration::from_millis(100) {
            return fail(
                "limits.clock_offset_warning",
                "must be at least 100ms: network delay alone would flag every gateway".into(),
            );
        }
        if self.limits.max_frame_age > lifecycle.retention.raw_audio {
            return fail(
                "limits.max_frame_age",
                format!(
                    "must be at most lifecycle.retention.raw_audio ({}): a frame older than the raw audio \
                     kept could no longer be recognised as a resend",
                    humantime::format_duration(lifecycle.retention.raw_audio)
                ),
            );
        }
        Ok(())
    }

    /// The most memory received frames can take: what HTTP/2 may buffer on every connection, plus frames
    /// read and not yet committed.
    pub fn memory_bound_bytes(&self) -> u64 {
        u64::from(self.flow.max_connections) * u64::from(self.flow.connection_window_bytes)
            + self.flow.max_inflight_bytes as u64
    }

    /// The frame validation limits.
    pub fn frame_limits(&self) -> auscult_frame::Limits {
        auscult_frame::Limits {
            max_clock_skew: self.limits.max_clock_skew,
            max_frame_age: self.limits.max_frame_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().expect("defaults valid");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut settings = Settings::default();
        settings.flow.max_stream_inflight_bytes = 10;
        let error = settings.validate().unwrap_err();
        assert_eq!(error.key, "flow.max_stream_inflight_bytes");
    }

    #[test]
    fn frames_are_never_accepted_older_than_the_raw_audio_kept() {
        let mut settings = Settings::default();
        settings.lifecycle.retention.raw_audio = Duration::from_secs(3 * 86_400);
        assert_eq!(settings.validate().unwrap_err().key, "limits.max_frame_age");
        settings.limits.max_frame_age = Duration::from_secs(2 * 86_400);
        settings.validate().expect("valid");
        settings.lifecycle.retention.kept_audio = Duration::from_secs(86_400);
        let error = settings.validate().unwrap_err();
        assert_eq!(error.key, "lifecycle.retention");
        assert!(error.problem.starts_with("kept_audio"), "{}", error.problem);
    }
}
