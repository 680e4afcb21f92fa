//! The data lifecycle: `frames`, verdicts and health events live in time partitions that are created ahead
//! of the data and dropped whole when they expire; the audio that verdicts and alerts point at is copied out
//! first and kept longer; queues are pruned by bounded deletes. Partitions are managed here, by the
//! services, rather than by an extension such as `pg_partman`: the rule that matters (keep the audio an
//! alert points at) needs auscult's own tables, and a managed PostgreSQL may not offer the extension.
//!
//! Reading order: `policy` (what is kept how long), `pass` (one maintenance pass), `status` (what
//! `auscult retention status` shows), `clip` (an alert's audio).

mod clip;
mod pass;
mod policy;
mod status;

pub use clip::{AlertAudio, ClipFrame, alert_audio};
pub use pass::{DroppedPartition, PassOutcome, PassReport, run_pass};
pub use policy::{InvalidPolicy, PartitionedTable, RetentionPolicy};
pub use status::{
    KeptAudio, LifecycleStatus, PartitionStatus, PartitionedKind, QueueSize, lifecycle_status,
};
