//! How long each kind of data is kept, and how frames are sliced into partitions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const DAY: Duration = Duration::from_secs(86_400);

/// Retention per kind of data. Every duration counts from the data's own time: capture time for audio and
/// verdicts, event time for health events, resolution time for alerts, completion time for jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Raw audio (the `frames` table). Also the deduplication horizon: a resend of a frame older than this is
    /// no longer recognised, so it must be at least ingest's `limits.max_frame_age`, which refuses such frames.
    #[serde(with = "humantime_serde")]
    pub raw_audio: Duration,
    /// Audio around anomalous verdicts and alerts, copied out of expiring partitions into `frames_kept`.
    #[serde(with = "humantime_serde")]
    pub kept_audio: Duration,
    /// How much audio before and after an anomalous verdict or an alert is kept.
    #[serde(with = "humantime_serde")]
    pub kept_margin: Duration,
    /// Verdicts with their band statistics (`analysis_results`).
    #[serde(with = "humantime_serde")]
    pub verdicts: Duration,
    /// Sensor health events (silence, rate changes).
    #[serde(with = "humantime_serde")]
    pub health_events: Duration,
    /// Resolved alerts and their webhook deliveries.
    #[serde(with = "humantime_serde")]
    pub alerts: Duration,
    /// Analysis jobs once done (the queue keeps only work in hand).
    #[serde(with = "humantime_serde")]
    pub done_jobs: Duration,
    /// Width of one `frames` partition (UTC-aligned). A day suits most plants; a plant writing more than
    /// about 100 GB of audio a day may prefer hours, so that each drop frees less at once.
    #[serde(with = "humantime_serde")]
    pub frame_partition: Duration,
    /// How far ahead of the present partitions are created, so that an outage of the maintenance pass
    /// shorter than this never leaves a frame without a partition.
    #[serde(with = "humantime_serde")]
    pub partitions_ahead: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            raw_audio: 7 * DAY,
            kept_audio: 90 * DAY,
            kept_margin: Duration::from_secs(10),
            verdicts: 730 * DAY,
            health_events: 365 * DAY,
            alerts: 730 * DAY,
            done_jobs: Duration::from_secs(3_600),
            frame_partition: DAY,
            partitions_ahead: 3 * DAY,
        }
    }
}

/// A policy that cannot work, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct InvalidPolicy {
    pub key: &'static str,
    pub problem: String,
}

/// More partitions than this per table make planning slow; a wider `frame_partition` is the answer.
const MAX_FRAME_PARTITIONS: u128 = 1_000;

impl RetentionPolicy {
    /// Checks that the policy can work; the error names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let invalid = |key, problem: String| Err(InvalidPolicy { key, problem });
        let positive = [
            ("raw_audio", self.raw_audio),
            ("kept_audio", self.kept_audio),
            ("verdicts", self.verdicts),
            ("health_events", self.health_events),
            ("alerts", self.alerts),
            ("done_jobs", self.done_jobs),
            ("frame_partition", self.frame_partition),
            ("partitions_ahead", self.partitions_ahead),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return invalid(key, "must be more than zero".into());
            }
        }
        if self.kept_audio < self.raw_audio {
            return invalid(
                "kept_audio",
                format!(
                    "must be at least raw_audio ({}): kept audio is what outlives raw audio",
                    humantime::format_duration(self.raw_audio)
                ),
            );
        }
        if self.kept_margin > Duration::from_secs(3_600) {
            return invalid("kept_margin", "must be at most 1h".into());
        }
        if self.frame_partition < Duration::from_secs(60) || self.frame_partition > 31 * DAY {
            return invalid("frame_partition", "must be between 1m and 31d".into());
        }
        if self.frame_partition.subsec_nanos() != 0 {
            return invalid(
                "frame_partition",
                "must be a whole number of seconds".into(),
            );
        }
        let partitions = (self.raw_audio + self.partitions_ahead).as_nanos()
            / self.frame_partition.as_nanos().max(1);
        if partitions > MAX_FRAME_PARTITIONS {
            return invalid(
                "frame_partition",
                format!(
                    "would make {partitions} partitions of frames (raw_audio + partitions_ahead over \
                     frame_partition); at most {MAX_FRAME_PARTITIONS}"
                ),
            );
        }
        if self.partitions_ahead < self.frame_partition {
            return invalid(
                "partitions_ahead",
                "must be at least one frame_partition".into(),
            );
        }
        Ok(())
    }

    /// How long rows of `table` are kept, for the partitioned tables.
    pub fn retention_of(&self, table: PartitionedTable) -> Duration {
        match table {
            PartitionedTable::Frames => self.raw_audio,
            PartitionedTable::Results => self.verdicts,
            PartitionedTable::HealthEvents => self.health_events,
        }
    }
}

/// The tables partitioned by time, with their time column and partition width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionedTable {
    Frames,
    Results,
    HealthEvents,
}

impl PartitionedTable {
    pub const ALL: [Self; 3] = [Self::Frames, Self::Results, Self::HealthEvents];

    pub fn table(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Results => "analysis_results",
            Self::HealthEvents => "health_events",
        }
    }

    /// What an operator calls the data this table holds.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Frames => "raw audio",
            Self::Results => "verdicts",
            Self::HealthEvents => "health events",
        }
    }

    /// Partition width: `frame_partition` for frames, calendar months for the rest (they are small per row
    /// and kept for years, so months keep the partition count low).
    pub(crate) fn step(self, policy: &RetentionPolicy) -> Step {
        match self {
            Self::Frames => Step::Seconds(policy.frame_partition.as_secs()),
            Self::Results | Self::HealthEvents => Step::Month,
        }
    }
}

/// A partition width as PostgreSQL's `make_interval` takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Seconds(u64),
    Month,
}

impl Step {
    /// (months, seconds) for `make_interval(months => $, secs => $)`.
    pub(crate) fn interval_parts(self) -> (i32, f64) {
        match self {
            // Validated to at most 31 days: exact in f64.
            Self::Seconds(s) => (0, s as f64),
            Self::Month => (1, 0.0),
        }
    }

    /// A duration at least as long as one partition, to create one ahead of the present.
    pub(crate) fn at_least(self) -> Duration {
        match self {
            Self::Seconds(s) => Duration::from_secs(s),
            Self::Month => 31 * DAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_raw_audio_a_week() {
        let policy = RetentionPolicy::default();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(policy.raw_audio, 7 * DAY);
    }

    #[test]
    fn a_policy_that_cannot_work_names_its_key() {
        let check = |change: fn(&mut RetentionPolicy)| {
            let mut policy = RetentionPolicy::default();
            change(&mut policy);
            policy.validate().map_err(|e| e.key)
        };
        assert_eq!(check(|p| p.raw_audio = Duration::ZERO), Err("raw_audio"));
        assert_eq!(check(|p| p.kept_audio = DAY), Err("kept_audio"));
        assert_eq!(
            check(|p| p.frame_partition = Duration::from_secs(30)),
            Err("frame_partition")
        );
        assert_eq!(
            check(|p| p.frame_partition = Duration::from_millis(90_500)),
            Err("frame_partition")
        );
        // 7 days of one-minute partitions: ten thousand tables.
        assert_eq!(
            check(|p| p.frame_partition = Duration::from_secs(60)),
            Err("frame_partition")
        );
        assert_eq!(
            check(|p| p.partitions_ahead = Duration::from_secs(3_600)),
            Err("partitions_ahead")
        );
        assert_eq!(
            check(|p| p.frame_partition = Duration::from_secs(6 * 3_600)),
            Ok(())
        );
    }

    #[test]
    fn reads_human_durations() {
        let policy: RetentionPolicy =
            serde_json::from_str(r#"{"raw_audio": "3d", "kept_margin": "30s"}"#).unwrap();
        assert_eq!(policy.raw_audio, 3 * DAY);
        assert_eq!(policy.kept_margin, Duration::from_secs(30));
        assert_eq!(policy.verdicts, RetentionPolicy::default().verdicts);
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"raw_audoi": "3d"}"#).is_err());
    }
}
