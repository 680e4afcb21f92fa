//! The `auscult-analysis` service: gRPC `Analysis.Score` with health and reflection, metrics on the
//! admin port, and the model it scores with — the registry's active model, followed as it changes.

use std::sync::{Arc, OnceLock};

use auscult_proto::analysis::v1::analysis_server::AnalysisServer;
use auscult_telemetry::Readiness;
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::{Interceptor, interceptor::InterceptedService},
    transport::Server,
};
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
    #[error("{key}: {source}")]
    SecretFile {
        key: &'static str,
        source: auscult_settings::SecretFileError,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("telemetry: {0}")]
    Telemetry(#[from] auscult_telemetry::TelemetryError),
}

pub use auscult_service::Listeners;

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
    let credential = settings
        .auth
        .credential_file
        .as_deref()
        .map(auscult_settings::read_credential)
        .transpose()
        .map_err(|source| AnalysisError::SecretFile {
            key: "auth.credential_file",
            source,
        })?;
    let tls = settings
        .tls
        .as_ref()
        .map(auscult_settings::ServerTls::server_config)
        .transpose()
        .map_err(|source| AnalysisError::SecretFile { key: "tls", source })?;
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
    info!(
        ?addr,
        tls = tls.is_some(),
        credential = credential.is_some(),
        "analysis serving"
    );
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
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    // Health and reflection stay open (probes use them); scoring needs the credential when one is set.
    let serve = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            AnalysisServer::new(service).max_decoding_message_size(16 << 20),
            CredentialCheck::new(credential.as_deref()),
        ))
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

/// Admits calls that present the shared credential as `authorization: Bearer <secret>` (all calls when none
/// is set). Digests are compared, so the comparison's time says nothing about the secret.
#[derive(Clone)]
struct CredentialCheck {
    digest: Option<[u8; 32]>,
}

impl CredentialCheck {
    fn new(credential: Option<&str>) -> Self {
        Self {
            digest: credential.map(|c| Sha256::digest(c.as_bytes()).into()),
        }
    }
}

impl Interceptor for CredentialCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = self.digest else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|secret| -> [u8; 32] { Sha256::digest(secret.trim().as_bytes()).into() });
        if presented == Some(expected) {
            return Ok(request);
        }
        let reason = if presented.is_some() {
            "wrong_credential"
        } else {
            "missing_credential"
        };
        metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
        Err(tonic::Status::unauthenticated(
            "Analysis.Score needs `authorization: Bearer <the shared credential>` (the listener's \
             analysis.credential_file)",
        ))
    }
}

/// Calls refused for a missing or wrong credential, by reason.
const AUTH_FAILURES_TOTAL: &str = "auscult_analysis_auth_failures_total";

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
    // Said before the load, so that a replica stuck loading shows where it is.
    info!(%version, bytes = file.len(), "loading the active model");
    let model = tokio::task::spawn_blocking(move || {
        auscult_model::Detector::from_bytes(&file, &auscult_model::default_device())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("active model {version}: {e}"))?;
    Ok(Some(model))
}
