//! The `auscult-listener` service: its tasks, gRPC health and reflection, metrics on the admin port.

use std::sync::Arc;

use auscult_telemetry::Readiness;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::replicas::AnalysisReplicas;
use crate::settings::{InvalidSetting, Settings};
use crate::wakeup::Wakeups;
use crate::worker::WorkerContext;

/// What stops the listener from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error("store: {0}")]
    Store(#[from] auscult_store::StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] auscult_telemetry::TelemetryError),
    #[error("elasticsearch: {0}")]
    Search(#[from] auscult_search::IndexerError),
    #[error(transparent)]
    AnalysisLink(#[from] crate::replicas::LinkError),
}

pub use auscult_service::Listeners;

/// Runs the listener until `shutdown` is cancelled; batches in flight get `shutdown_grace` to finish.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ListenerError> {
    settings.validate()?;
    let metrics_handle = auscult_telemetry::metrics_handle()?;
    let owner: Arc<str> = settings.instance_name().into();
    // The instance in the application name tells operators (and pg_stat_activity) which listener a
    // session belongs to.
    let store = auscult_store::connect_pool(
        &settings.database.url,
        settings.database.pool_size,
        &format!("auscult-listener {owner}"),
    )?;
    let readiness = Readiness::default();
    let wakeups = Wakeups::new();
    let replicas = AnalysisReplicas::connect(settings.analysis.clone()).await?;
    info!(%owner, replicas = ?settings.analysis.endpoints, "listener starting");
    let rule = settings.alert_rule();
    // What the rule costs in false alerts: the figure an on-call rota should know before it trusts
    // the pager. Thresholds target 1 % of healthy clips; onboarded machines were measured flagging
    // more of the healthy clips they never heard (rare healthy transients no range covers).
    let target_rate = 0.01;
    let measured_rate = auscult_store::MEASURED_FALSE_ALARM_RATE;
    let at_target = rule.live_false_alerts_per_day(target_rate);
    let as_measured = rule.live_false_alerts_per_day(measured_rate);
    info!(
        fire_at = rule.fire_at,
        window = rule.window,
        target_rate,
        false_alerts_per_sensor_per_day = at_target,
        measured_rate,
        false_alerts_per_sensor_per_day_as_measured = as_measured,
        "alert rule: false alerts per healthy sensor a day, with one-second frames, at the thresholds' target false-alarm rate per clip and at the rate measured on unseen healthy clips"
    );
    if as_measured > 1.0 {
        warn!(
            fire_at = rule.fire_at,
            window = rule.window,
            measured_rate,
            false_alerts_per_sensor_per_day_as_measured = as_measured,
            "this alert rule pages more than once a day per healthy sensor at the false-alarm rate measured on unseen healthy clips: a rule for demos, not for a plant (the Helm chart and docker compose run 40 of 60)"
        );
    }

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::wakeup::listen(
        settings.database.url.clone(),
        settings.database.reconnect_backoff,
        wakeups.clone(),
        readiness.clone(),
        shutdown.clone(),
    )));
    let context = WorkerContext {
        settings: Arc::new(settings.clone()),
        owner: Arc::clone(&owner),
        store: store.clone(),
        replicas: replicas.clone(),
    };
    let workers: Vec<_> = (0..settings.jobs.concurrency)
        .map(|_| {
            tokio::spawn(crate::worker::run(
                context.clone(),
                wakeups.frames.subscribe(),
                shutdown.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(crate::webhooks::deliver(
        settings.alerts.clone(),
        store.clone(),
        wakeups.alerts.subscribe(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(crate::health::watch(
        settings.clone(),
        store.clone(),
        shutdown.clone(),
    )));
    if settings.elastic.enabled() {
        // The projection runs beside the scoring and never in its way: its own tasks, its own
        // connections, and nothing else waits for it.
        let indexer = auscult_search::Indexer::new(settings.elastic.clone(), store.clone())?;
        info!(urls = ?settings.elastic.urls, "indexing into Elasticsearch");
        tasks.push(tokio::spawn(Arc::new(indexer).run(shutdown.clone())));
    } else {
        info!("no elastic.urls: search documents stay queued in the outbox");
    }
    tasks.push(tokio::spawn({
        let (replicas, stop, every) = (
            replicas.clone(),
            shutdown.clone(),
            settings.analysis.resolve_interval,
        );
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => replicas.refresh().await,
                }
            }
        }
    }));
    let admin = tokio::spawn({
        let (readiness, stop) = (readiness.clone(), shutdown.clone());
        async move {
            if let Err(e) =
                auscult_telemetry::serve_admin(listeners.admin, metrics_handle, readiness, stop)
                    .await
            {
                warn!("admin endpoint stopped: {e}");
            }
        }
    });

    // The listener serves no API of its own; gRPC health and reflection let the same probes and
    // tools check it as the other services.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // "" answers whether the process serves at all (liveness); HEALTH_SERVICE whether it can work,
    // i.e. holds its notification connection (readiness), as `/readyz` does.
    tokio::spawn(mirror_readiness(
        readiness.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let stop = {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        async move {
            shutdown.cancelled().await;
            for service in ["", HEALTH_SERVICE] {
                health
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        }
    };
    let served = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), stop)
        .await;

    info!("shutting down: finishing batches in flight");
    if !crate::worker::join_within(workers, settings.shutdown_grace).await {
        warn!("batches did not finish within the shutdown grace period; their leases will expire");
    }
    let _ = crate::worker::join_within(tasks, std::time::Duration::from_secs(2)).await;
    let _ = admin.await;
    store.close();
    info!("listener stopped");
    served.map_err(ListenerError::from)
}

/// The gRPC health service name that reports the listener ready.
pub const HEALTH_SERVICE: &str = "auscult.listener.v1.Listener";

/// Keeps the health status of [`HEALTH_SERVICE`] equal to `readiness` until shutdown.
async fn mirror_readiness(
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut reported = None;
    loop {
        let ready = readiness.get();
        if reported != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(HEALTH_SERVICE, status).await;
            reported = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
    }
}
