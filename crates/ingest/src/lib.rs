//! The ingest service: gateways stream microphone frames in, ingest validates them, stores them in PostgreSQL
//! in batched transactions, and acknowledges each frame only after its transaction committed. A frame
//! acknowledged is never lost; a frame sent twice is stored once.
//!
//! Reading order: [`run`] wires everything; `grpc` authenticates streams; `stream` runs one stream with its
//! flow control; `writer` batches frames from all streams into transactions; `ack` builds acknowledgements.

mod ack;
mod clock;
mod connections;
mod devices;
mod grpc;
mod identity;
mod lifecycle;
mod metrics;
mod settings;
mod stream;
mod writer;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use auscult_proto::ingest::v1::ingest_server::IngestServer;
use auscult_telemetry::Readiness;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Server;
use tracing::{info, warn};

pub use settings::{
    AudioStorage, AuthSettings, DeviceSettings, InvalidSetting, Settings, TlsSettings,
};

/// What stops the service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error("store: {0}")]
    Store(#[from] auscult_store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] auscult_settings::SecretFileError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] auscult_telemetry::TelemetryError),
}

pub use auscult_service::Listeners;

/// How often the database is checked for readiness.
const READINESS_INTERVAL: Duration = Duration::from_secs(2);
/// A readiness check that takes longer than this counts as a database that does not answer.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs ingest until `shutdown` is cancelled, then shuts down in order: report NOT_SERVING, stop reading new
/// frames, commit and acknowledge what is in flight (within `shutdown_grace`), close the streams with
/// UNAVAILABLE, stop the server, and let the writers drain the queue.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    settings.validate()?;
    let metrics_handle = auscult_telemetry::metrics_handle()?;
    metrics::describe();
    // A batch's transaction lasts milliseconds and its client stops waiting after `commit_timeout`. A
    // replica that froze inside one (a hung host, a stopped process) must not keep the rows it was
    // inserting locked for long: the gateways resend those frames to another replica, whose insert
    // waits on them. So the server ends such a transaction after the commit timeout, or 5 s without
    // a statement.
    let writer_limits = auscult_store::SessionLimits {
        statement_timeout: settings.batch.commit_timeout,
        idle_in_transaction_timeout: Duration::from_secs(5),
        ..auscult_store::SessionLimits::default()
    };
    let pool = auscult_store::connect_pool_with(
        &settings.database.url,
        settings.database.pool_size,
        "auscult-ingest",
        &writer_limits,
    )?;
    let auth_pool = auscult_store::connect_pool(
        &settings.database.url,
        settings.auth.pool_size,
        "auscult-ingest-auth",
    )?;
    let devices = Arc::new(devices::Devices::new(settings.devices.clone()));
    let tasks = TaskTracker::new();
    let streams = TaskTracker::new();
    let abort_writers = CancellationToken::new();
    let submit =
        writer::spawn_writers(&settings.batch, pool.clone(), &tasks, abort_writers.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<IngestServer<grpc::IngestService>>()
        .await;
    let readiness = Readiness::default();
    tasks.spawn(watch_readiness(
        pool.clone(),
        health.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    if settings.lifecycle.enabled {
        tasks.spawn(lifecycle::maintain(
            settings.lifecycle.clone(),
            settings.database.url.clone(),
            instance_name(),
            shutdown.clone(),
        ));
    }
    tasks.spawn({
        let (metrics_handle, readiness, stop) =
            (metrics_handle, readiness.clone(), shutdown.clone());
        async move {
            if let Err(e) =
                auscult_telemetry::serve_admin(listeners.admin, metrics_handle, readiness, stop)
                    .await
            {
                warn!("admin endpoint stopped: {e}");
            }
        }
    });

    tasks.spawn(end_revoked_streams(
        auth_pool.clone(),
        Arc::clone(&devices),
        settings.auth.recheck_interval,
        shutdown.clone(),
    ));

    let service = grpc::IngestService {
        auth_pool: auth_pool.clone(),
        auth_wait: settings.auth.wait,
        devices,
        limits: settings.frame_limits(),
        clock_offset_warning: settings.limits.clock_offset_warning,
        compress: settings.storage.audio == settings::AudioStorage::Flac,
        submit,
        service_budget: Arc::new(Semaphore::new(settings.flow.max_inflight_bytes)),
        stream_budget_bytes: settings.flow.max_stream_inflight_bytes,
        streams: streams.clone(),
        shutdown: shutdown.clone(),
        next_stream_id: AtomicU64::new(0),
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(auscult_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both reflection versions: many deployed tools (grpcurl before 1.8.8) speak only v1alpha.
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);

    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(settings.flow.max_streams_per_connection))
        .initial_stream_window_size(Some(settings.flow.stream_window_bytes))
        .initial_connection_window_size(Some(settings.flow.connection_window_bytes))
        // A client that opens and resets streams in a loop (CVE-2023-44487) is cut off.
        .http2_max_pending_accept_reset_streams(Some(32))
        .http2_max_header_list_size(Some(16 << 10));
    if let Some(tls) = &settings.tls {
        server = server.tls_config(tls.server_config()?)?;
    }
    let addr = listeners.grpc.local_addr().ok();
    let incoming = connections::counted(
        TcpListenerStream::new(listeners.grpc),
        Arc::new(Semaphore::new(settings.flow.max_connections as usize)),
    );
    info!(
        ?addr,
        tls = settings.tls.is_some(),
        max_connections = settings.flow.max_connections,
        memory_bound_mib = settings.memory_bound_bytes() >> 20,
        "ingest serving"
    );

    let stop_accepting = {
        let (shutdown, health, streams) = (shutdown.clone(), health.clone(), streams.clone());
        async move {
            shutdown.cancelled().await;
            info!("shutting down: finishing in-flight frames");
            health
                .set_not_serving::<IngestServer<grpc::IngestService>>()
                .await;
            streams.close();
            streams.wait().await;
        }
    };
    let serve = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            IngestServer::new(service)
                .max_decoding_message_size(settings.limits.max_message_bytes)
                .max_encoding_message_size(4 << 20),
        )
        .serve_with_incoming_shutdown(incoming, stop_accepting);

    let grace = settings.shutdown_grace;
    let served = tokio::select! {
        served = serve => served,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("streams did not finish within the shutdown grace period");
            Ok(())
        }
    };
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            "writers did not drain within the shutdown grace period; unacknowledged frames will be resent"
        );
        abort_writers.cancel();
        tasks.wait().await;
    }
    pool.close();
    auth_pool.close();
    info!("ingest stopped");
    served.map_err(IngestError::from)
}

/// How this replica names itself in `lifecycle_state`: its host name (the pod's, in Kubernetes).
/// Checks the tokens of open streams every `interval` and ends the streams whose token was revoked, so a
/// revocation takes effect on open streams within one interval (new streams are refused at once).
async fn end_revoked_streams(
    auth_pool: auscult_store::Pool,
    devices: Arc<devices::Devices>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let tokens = devices.open_tokens();
        if tokens.is_empty() {
            continue;
        }
        let checked = tokio::time::timeout(interval, async {
            let client = auth_pool.get().await?;
            auscult_store::tokens_no_longer_valid(&**client, &tokens).await
        })
        .await;
        match checked {
            Ok(Ok(revoked)) if !revoked.is_empty() => {
                let ended = devices.end_streams_of(&revoked);
                info!(
                    tokens = revoked.len(),
                    streams = ended,
                    "ending the streams of revoked tokens"
                );
            }
            Ok(Ok(_)) => {}
            // Streams stay open while the database is away: the writers cannot store their frames anyway,
            // and the next check comes within one interval of its return.
            Ok(Err(e)) => warn!("cannot check open streams' tokens: {e}"),
            Err(_) => warn!("checking open streams' tokens took longer than {interval:?}"),
        }
    }
}

fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ingest".into());
    format!("{host}/{}", std::process::id())
}

/// Reports SERVING while the primary answers, writable, with the schema this build expects or a newer one.
async fn watch_readiness(
    pool: auscult_store::Pool,
    health: tonic_health::server::HealthReporter,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut last: Option<Result<(), String>> = None;
    let mut last_durable = None;
    loop {
        let checked = tokio::time::timeout(READINESS_TIMEOUT, check_database(&pool))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the database did not answer within {READINESS_TIMEOUT:?}"
                ))
            });
        let ready = match checked {
            Ok(state) => {
                if last.as_ref().is_none_or(Result::is_err)
                    && let auscult_store::SchemaStatus::Ahead { .. } = state.schema
                {
                    info!("{}", state.schema);
                }
                ::metrics::gauge!(metrics::ACKS_SURVIVE_PRIMARY_LOSS).set(
                    if state.durability.survives_primary_loss() {
                        1.0
                    } else {
                        0.0
                    },
                );
                if last_durable != Some(state.durability.survives_primary_loss()) {
                    if state.durability.survives_primary_loss() {
                        info!(
                            "acknowledgements wait for a synchronous standby: {}",
                            state.durability
                        );
                    } else {
                        warn!(
                            "acknowledged frames do not survive the loss of the primary's disk: {}; \
                             set synchronous_standby_names (and synchronous_commit = on) on the primary",
                            state.durability
                        );
                    }
                    last_durable = Some(state.durability.survives_primary_loss());
                }
                Ok(())
            }
            Err(problem) => Err(problem),
        };
        if last.as_ref() != Some(&ready) {
            match &ready {
                Ok(()) => {
                    info!("database ready");
                    health
                        .set_serving::<IngestServer<grpc::IngestService>>()
                        .await;
                }
                Err(problem) => {
                    warn!("not ready: {problem}");
                    health
                        .set_not_serving::<IngestServer<grpc::IngestService>>()
                        .await;
                }
            }
            readiness.set(ready.is_ok());
            last = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                readiness.set(false);
                return;
            }
            () = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

/// What the readiness check found.
struct DatabaseState {
    schema: auscult_store::SchemaStatus,
    durability: auscult_store::CommitDurability,
}

/// One readiness check: a pooled connection, the schema, a writable primary, and how durable a COMMIT is.
async fn check_database(pool: &auscult_store::Pool) -> Result<DatabaseState, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let schema = auscult_store::check_schema(&**client)
        .await
        .map_err(|e| e.to_string())?;
    let durability = auscult_store::commit_durability(&**client)
        .await
        .map_err(|e| e.to_string())?;
    if durability.read_only {
        // A standby, or a primary being demoted: nothing can be stored here. With every host in the URL
        // and target_session_attrs=read-write, new connections find the primary.
        return Err("the database is read-only (a standby): ingest needs the primary".into());
    }
    Ok(DatabaseState { schema, durability })
}
