//! PostgreSQL, the source of truth: the connection pool, the embedded schema migrations, and the queries every
//! service runs. Query functions take a client or transaction so that callers decide transaction boundaries.

mod alerts;
mod devices;
mod durability;
mod error;
mod frames;
mod health;
mod jobs;
mod lifecycle;
mod migrations;
mod models;
mod pool;
mod results;
mod search;
pub mod tls;

pub use alerts::{
    ALERTS_CHANNEL, AlertChange, AlertEvent, AlertRecord, AlertRule, Delivery,
    MEASURED_FALSE_ALARM_RATE, claim_deliveries, list_alerts, settle_delivery,
};
pub use devices::{
    DeviceSummary, add_device, authenticate, issue_token, list_devices, revoke_tokens,
    token_digest, tokens_no_longer_valid,
};
pub use durability::{CommitDurability, commit_durability};
pub use error::StoreError;
pub use frames::{
    FRAMES_CHANNEL, InsertOutcome, StoredAudio, copy_frames, frame_audio, insert_frames,
};
pub use health::{HealthEvent, HealthRule, sensor_states, watch_sensors};
pub use jobs::{
    Claim, ClaimedJob, FailedAttempt, QueueDepth, RetryPolicy, claim_jobs, extend_leases,
    fail_jobs, queue_depth,
};
pub use lifecycle::{
    AlertAudio, ClipFrame, DroppedPartition, InvalidPolicy, KeptAudio, LifecycleStatus,
    PartitionStatus, PartitionedKind, PartitionedTable, PassOutcome, PassReport, QueueSize,
    RetentionPolicy, alert_audio, lifecycle_status, run_pass,
};
pub use migrations::{
    LATEST_VERSION, SchemaStatus, check_schema, migrate, migrate_to, schema_version,
};
pub use models::{
    MAX_MODEL_BYTES, MODELS_CHANNEL, ModelRecord, PublishOutcome, activate_model, active_model,
    list_models, publish_model,
};
pub use pool::{
    Pool, SessionConfig, SessionConnection, SessionLimits, connect_pool, connect_pool_with,
    session_config,
};
pub use results::{
    Completion, NewResult, StoredResult, StreamSummary, complete_jobs, stream_history,
};
pub use search::{
    DeadLetter, OutboxClaim, OutboxDepth, OutboxEntry, RefillWindow, Refusal, SearchKind,
    Settlement, SourceDocument, claim_outbox, disable_indexing, enable_indexing, indexing_enabled,
    list_dead_letters, load_documents, outbox_depth, projection_id, refill_outbox, release_outbox,
    replay_dead_letters, settle_outbox,
};

/// Re-exported so that callers name one `Client` type without depending on the pool crate themselves.
pub use deadpool_postgres::{Client, PoolError, Transaction};
