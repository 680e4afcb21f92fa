//! Telemetry shared by every auscult binary: one tracing setup (human-readable on a terminal, JSON lines in
//! containers, and OTLP trace export when a collector is configured), one Prometheus recorder, and the admin
//! HTTP endpoint that serves `/metrics`, `/livez` and `/readyz`.

pub mod trace;

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

pub use trace::{TraceParent, TracingGuard};

/// What can fail setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not install the metrics recorder: {0}")]
    Recorder(String),
    #[error("admin endpoint failed: {0}")]
    Admin(#[from] std::io::Error),
    #[error("trace export: {0}")]
    Tracing(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// `AUSCULT_LOG_FORMAT=json|text`; otherwise text.
    pub fn from_env() -> Self {
        match std::env::var("AUSCULT_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Installs the global tracing subscriber. Log filtering follows `RUST_LOG` (default `default_filter`).
/// When the OpenTelemetry variables name a collector (see [`trace`]), auscult's spans are also exported to
/// it as `service_name` (unless `OTEL_SERVICE_NAME` says otherwise), whatever the log filter. Keep the
/// returned guard until the end of `main`: dropping it sends the spans still queued. Safe to call more
/// than once: later calls install nothing.
pub fn init_tracing(
    format: LogFormat,
    default_filter: &str,
    service_name: &str,
) -> Result<TracingGuard, TelemetryError> {
    let target = trace::ExportTarget::from_vars(|name| std::env::var(name).ok())?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let log = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        // Colours for a person at a terminal only: escape codes in a log file or a collector are noise.
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let (export, guard) = match &target {
        Some(target) => {
            let (tracer, guard) = trace::start_export(target, service_name)?;
            // Only auscult's own spans: those of the libraries below it (HTTP/2 frames, connection
            // pools) would drown a frame's trace.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("auscult", tracing::Level::INFO));
            (Some(layer), guard)
        }
        None => (None, TracingGuard::off()),
    };
    if tracing_subscriber::registry()
        .with(log)
        .with(export)
        .try_init()
        .is_ok()
        && let Some(target) = &target
    {
        tracing::info!(
            endpoint = %trace::without_credentials(&target.endpoint),
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(guard)
}

/// Seconds buckets for latency histograms: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for counts per batch.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle). Histograms whose
/// names end in `_seconds` get latency buckets, those ending in `_frames` count buckets.
pub fn metrics_handle() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_frames".into()), COUNT_BUCKETS))
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Whether the service is ready for traffic, as `/readyz` reports it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics` (Prometheus text), `/livez` (always 200 while the process runs) and `/readyz` (200 when
/// ready, 503 otherwise) until `shutdown` is cancelled.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), TelemetryError> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State((handle, _)): State<(PrometheusHandle, Readiness)>| async move {
                    handle.render()
                },
            ),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(
                |State((_, ready)): State<(PrometheusHandle, Readiness)>| async move {
                    if ready.get() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                },
            ),
        )
        .with_state((metrics, readiness));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM (Kubernetes, systemd) or Ctrl-C: every service's ordered shutdown starts here.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        () = terminate => tracing::info!("terminated"),
    }
    shutdown.cancel();
}
