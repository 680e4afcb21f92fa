//! The `auscult-analysis` service: gRPC `Analysis.Score` with health and reflection, metrics on the
//! admin port, and the model it scores with — the registry's active model, followed as it changes.

use std::sync::{Arc, OnceLock};

use auscult_proto::analysis::v1::analysis_server::AnalysisServer;
use auscult_telemetry::Readiness;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::ScoringPool;
use crate::grpc::AnalysisService;
use crate::settings::{InvalidSetting, Settings};

/// What stops the service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    #[error("store: {0}")]
    Store(#[from] auscult_store::StoreError),
    #[error("model {path}: {source}")]
    ModelFile {
        path: String,
        source: auscult_model::ModelError,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] auscult_telemetry::TelemetryError),
}

/// The sockets the service serves on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

type Health = tonic_health::server::HealthReporter;

/// Runs the analysis service until `shutdown` is cancelled. It reports NOT_SERVING until a model is
/// loaded: from `model.file`, or the registry's active model, which it then follows.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), AnalysisError> {
    settings.validate()?;
    let metrics_handle = auscult_telemetry::metrics_handle()?;
    let store = auscult_store::connect_pool(
        &settings.database.url,
        settings.database.pool_size,
        "auscult-analysis",
    )?;
    let slot: Arc<OnceLock<ScoringPool>> = Arc::new(OnceLock::new());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<AnalysisServer<AnalysisService>>()
        .await;
    let readiness = Readiness::default();

    let follower = tokio::spawn(follow_model(
        settings.clone(),
        store.clone(),
        Arc::clone(&slot),
        health.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
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

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(auscult_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let service = AnalysisService {
        pool: slot,
        store: Some(store.clone()),
    };
    let addr = listeners.grpc.local_addr().ok();
    info!(?addr, "analysis serving");
    let stop = {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        async move {
            shutdown.cancelled().await;
            info!("shutting down: finishing requests in flight");
            health
                .set_not_serving::<AnalysisServer<AnalysisService>>()
                .await;
        }
    };
    let serve = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AnalysisServer::new(service).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), stop);
    let grace = settings.shutdown_grace;
    let served = tokio::select! {
        served = serve => served,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("requests did not finish within the shutdown grace period");
            Ok(())
        }
    };
    follower.abort();
    let _ = admin.await;
    store.close();
    info!("analysis stopped");
    served.map_err(AnalysisError::from)
}

/// Loads the first model and keeps the pool on the active one.
async fn follow_model(
    settings: Settings,
    store: auscult_store::Pool,
    slot: Arc<OnceLock<ScoringPool>>,
    health: Health,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    if let Some(path) = &settings.model.file {
        let path = path.clone();
        match tokio::task::spawn_blocking(move || auscult_model::Detector::load(&path)).await {
            Ok(Ok(model)) => {
                info!(version = %model.info.version, "serving the model file");
                let _ = slot.set(ScoringPool::start(
                    model,
                    settings.workers(),
                    settings.scoring.queue_depth,
                ));
                health
                    .set_serving::<AnalysisServer<AnalysisService>>()
                    .await;
                readiness.set(true);
            }
            Ok(Err(e)) => warn!("cannot load the model file: {e}"),
            Err(e) => warn!("cannot load the model file: {e}"),
        }
        return;
    }
    let mut current: Option<String> = None;
    loop {
        match load_active(&store, current.as_deref()).await {
            Ok(Some(model)) => {
                let version = model.info.version.clone();
                match slot.get() {
                    Some(pool) => pool.replace_model(model),
                    None => {
                        let _ = slot.set(ScoringPool::start(
                            model,
                            settings.workers(),
                            settings.scoring.queue_depth,
                        ));
                    }
                }
                info!(%version, "now scoring with the active model");
                current = Some(version);
                health
                    .set_serving::<AnalysisServer<AnalysisService>>()
                    .await;
                readiness.set(true);
            }
            Ok(None) if current.is_none() => {
                warn!(
                    "no active model in the registry yet: `auscult model publish FILE --activate`"
                );
            }
            Ok(None) => {}
            Err(problem) => {
                warn!("checking the model registry: {problem}");
                if current.is_none() {
                    readiness.set(false);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.model.poll_interval) => {}
        }
    }
}

/// The active model if its version differs from `current`.
async fn load_active(
    store: &auscult_store::Pool,
    current: Option<&str>,
) -> Result<Option<auscult_model::Detector>, String> {
    let client = store.get().await.map_err(|e| e.to_string())?;
    let Some((version, file)) = auscult_store::active_model(&**client)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    if Some(version.as_str()) == current {
        return Ok(None);
    }
    let model = tokio::task::spawn_blocking(move || {
        auscult_model::Detector::from_bytes(&file, &auscult_model::default_device())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("active model {version}: {e}"))?;
    Ok(Some(model))
}
