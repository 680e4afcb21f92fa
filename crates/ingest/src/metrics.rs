//! Names of the ingest service's Prometheus metrics, with their descriptions registered once at start.

pub const FRAMES_RECEIVED_TOTAL: &str = "auscult_ingest_frames_received_total";
pub const FRAMES_REJECTED_TOTAL: &str = "auscult_ingest_frames_rejected_total";
pub const FRAMES_STORED_TOTAL: &str = "auscult_ingest_frames_stored_total";
pub const FRAMES_DUPLICATE_TOTAL: &str = "auscult_ingest_frames_duplicate_total";
pub const BYTES_STORED_TOTAL: &str = "auscult_ingest_sample_bytes_stored_total";
pub const BATCH_COMMIT_SECONDS: &str = "auscult_ingest_batch_commit_seconds";
pub const BATCH_SIZE_FRAMES: &str = "auscult_ingest_batch_size_frames";
pub const BATCH_FAILURES_TOTAL: &str = "auscult_ingest_batch_failures_total";
pub const BATCH_SPLITS_TOTAL: &str = "auscult_ingest_batch_splits_total";
pub const STREAMS_ACTIVE: &str = "auscult_ingest_streams_active";
pub const STREAMS_ENDED_TOTAL: &str = "auscult_ingest_streams_ended_total";
pub const AUTH_FAILURES_TOTAL: &str = "auscult_ingest_auth_failures_total";
pub const STREAMS_REFUSED_TOTAL: &str = "auscult_ingest_streams_refused_total";
pub const STREAMS_REVOKED_TOTAL: &str = "auscult_ingest_streams_revoked_total";
pub const TRACE_CONTEXTS_IGNORED_TOTAL: &str = "auscult_ingest_trace_contexts_ignored_total";
pub const CLOCK_OFFSET_SECONDS: &str = "auscult_ingest_clock_offset_seconds";
pub const CLOCK_SKEWED_FRAMES_TOTAL: &str = "auscult_ingest_clock_skewed_frames_total";
pub const DEVICE_PACE_WAIT_SECONDS: &str = "auscult_ingest_device_pace_wait_seconds";
pub const CONNECTIONS_OPEN: &str = "auscult_ingest_connections_open";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "auscult_ingest_connections_refused_total";
pub const INFLIGHT_BYTES: &str = "auscult_ingest_inflight_bytes";
pub const ACKS_SURVIVE_PRIMARY_LOSS: &str = "auscult_ingest_acks_survive_primary_loss";
pub const COMPRESSION_FAILURES_TOTAL: &str = "auscult_ingest_compression_failures_total";
pub const LIFECYCLE_PASSES_TOTAL: &str = "auscult_lifecycle_passes_total";
pub const LIFECYCLE_LAST_PASS_SECONDS: &str = "auscult_lifecycle_last_pass_timestamp_seconds";
pub const PARTITIONS_CREATED_TOTAL: &str = "auscult_lifecycle_partitions_created_total";
pub const PARTITIONS_DROPPED_TOTAL: &str = "auscult_lifecycle_partitions_dropped_total";
pub const BYTES_FREED_TOTAL: &str = "auscult_lifecycle_bytes_freed_total";
pub const FRAMES_KEPT_TOTAL: &str = "auscult_lifecycle_frames_kept_total";
pub const ROWS_PRUNED_TOTAL: &str = "auscult_lifecycle_rows_pruned_total";
pub const STORED_BYTES: &str = "auscult_lifecycle_stored_bytes";
pub const PARTITIONS: &str = "auscult_lifecycle_partitions";
pub const NEXT_DROP_SECONDS: &str = "auscult_lifecycle_next_drop_timestamp_seconds";

/// Registers help texts so that `/metrics` explains itself.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        FRAMES_RECEIVED_TOTAL,
        "Frames received from gateways, valid or not."
    );
    describe_counter!(FRAMES_REJECTED_TOTAL, "Frames rejected, by reason.");
    describe_histogram!(
        CLOCK_OFFSET_SECONDS,
        "How far gateways' clocks are from ingest's (absolute, from each frame's sent_at, network delay included)."
    );
    describe_counter!(
        CLOCK_SKEWED_FRAMES_TOTAL,
        "Frames from gateways whose clock is off by more than limits.clock_offset_warning (flagged, not rejected)."
    );
    describe_counter!(FRAMES_STORED_TOTAL, "Frames newly stored (committed).");
    describe_counter!(
        FRAMES_DUPLICATE_TOTAL,
        "Resent frames that were already stored."
    );
    describe_counter!(BYTES_STORED_TOTAL, "Bytes of audio samples newly stored.");
    describe_histogram!(
        BATCH_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to insert and commit one batch."
    );
    describe_histogram!(BATCH_SIZE_FRAMES, "Frames per committed batch.");
    describe_counter!(BATCH_FAILURES_TOTAL, "Batches whose transaction failed.");
    describe_counter!(
        BATCH_SPLITS_TOTAL,
        "Batches (and parts of batches) the database refused, split to find the frames at fault."
    );
    describe_gauge!(STREAMS_ACTIVE, "Gateway streams currently open.");
    describe_counter!(STREAMS_ENDED_TOTAL, "Gateway streams ended, by gRPC code.");
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Streams refused by authentication or authorisation, by reason."
    );
    describe_counter!(
        STREAMS_REFUSED_TOTAL,
        "New streams refused for fairness, by reason (device_streams: the device holds as many as it \
         may; auth_busy: no authentication connection came free in time)."
    );
    describe_counter!(
        TRACE_CONTEXTS_IGNORED_TOTAL,
        "Frames whose traceparent was malformed and ignored (counted only while traces are exported)."
    );
    describe_counter!(
        STREAMS_REVOKED_TOTAL,
        "Open streams ended because the token they were opened with was revoked."
    );
    describe_histogram!(
        DEVICE_PACE_WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time a frame waited for its turn under its device's frame and byte rates."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Gateway connections open.");
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections closed on arrival because flow.max_connections were open."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        metrics::Unit::Bytes,
        "Sample bytes received but not yet committed."
    );
    describe_gauge!(
        ACKS_SURVIVE_PRIMARY_LOSS,
        "1 when a COMMIT (and so an acknowledgement) waits for a synchronous standby \
         (synchronous_standby_names set, synchronous_commit on, remote_write or remote_apply), 0 when \
         losing the primary's disk can lose acknowledged frames."
    );
    describe_counter!(
        LIFECYCLE_PASSES_TOTAL,
        "Data lifecycle passes, by outcome (ran, busy: another replica was running one, failed)."
    );
    describe_gauge!(
        LIFECYCLE_LAST_PASS_SECONDS,
        metrics::Unit::Seconds,
        "Unix time of this replica's last completed lifecycle pass."
    );
    describe_counter!(
        PARTITIONS_CREATED_TOTAL,
        "Time partitions created ahead of the data."
    );
    describe_counter!(
        PARTITIONS_DROPPED_TOTAL,
        "Expired time partitions dropped, by table."
    );
    describe_counter!(
        BYTES_FREED_TOTAL,
        metrics::Unit::Bytes,
        "Bytes freed by dropping expired partitions, by table."
    );
    describe_counter!(
        FRAMES_KEPT_TOTAL,
        "Frames copied into kept audio (around anomalies and alerts) before their partition was dropped."
    );
    describe_counter!(
        ROWS_PRUNED_TOTAL,
        "Rows removed by bounded deletes, by kind (done_jobs, orphans, kept_frames, alerts)."
    );
    describe_gauge!(
        STORED_BYTES,
        metrics::Unit::Bytes,
        "Bytes on disk per table (partitions, indexes and TOAST included), as of the last lifecycle pass."
    );
    describe_gauge!(PARTITIONS, "Time partitions per partitioned table.");
    describe_gauge!(
        NEXT_DROP_SECONDS,
        metrics::Unit::Seconds,
        "Unix time at which the next partition is due to be dropped."
    );
    describe_counter!(
        COMPRESSION_FAILURES_TOTAL,
        "Frames the FLAC encoder could not compress, stored as received instead."
    );
}
