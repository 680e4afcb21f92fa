//! Distributed traces: export over OTLP, and the W3C `traceparent` that carries a frame's trace from the
//! gateway through ingest, the job table and the listener to analysis.
//!
//! Export is off unless the standard OpenTelemetry variables ask for it, so a plant without a tracing
//! backend pays nothing: no exporter, no per-frame spans, no trace column filled. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans go over OTLP/gRPC to
//! that collector; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*` mean what the OpenTelemetry
//! specification says.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::TelemetryError;

/// Set once export is running: spans made only to be exported (one per frame) are made only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported. Per-frame spans cost time on the hot path, so callers make them only
/// when someone will see them.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Where traces should go, read from the OpenTelemetry variables; `None` when export is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExportTarget {
    /// The collector's OTLP/gRPC endpoint.
    pub endpoint: String,
}

impl ExportTarget {
    /// Reads the target from `var` (the environment, in production).
    pub(crate) fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(exporter) = set("OTEL_TRACES_EXPORTER") {
            match exporter.trim() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(TelemetryError::Tracing(format!(
                        "OTEL_TRACES_EXPORTER={other}: only \"otlp\" and \"none\" are supported"
                    )));
                }
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(name)
                && protocol.trim() != "grpc"
            {
                return Err(TelemetryError::Tracing(format!(
                    "{name}={protocol}: traces are exported over OTLP/gRPC only (\"grpc\", usually port 4317)"
                )));
            }
        }
        let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let endpoint = endpoint.trim().to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(TelemetryError::Tracing(format!(
                "OTLP endpoint {}: must start with http:// or https://",
                without_credentials(&endpoint)
            )));
        }
        Ok(Some(Self { endpoint }))
    }
}

/// `url` without the user information a URL may carry, for logs.
pub(crate) fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// Keeps trace export running; dropping it sends the spans still queued (a short-lived command's would
/// otherwise be lost) and stops the exporter.
pub struct TracingGuard {
    export: Option<(SdkTracerProvider, tokio::runtime::Runtime)>,
}

impl fmt::Debug for TracingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingGuard")
            .field("exporting", &self.export.is_some())
            .finish()
    }
}

impl TracingGuard {
    pub(crate) fn off() -> Self {
        Self { export: None }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some((provider, runtime)) = self.export.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("sending the last traces: {e}");
            }
            // Dropping a runtime blocks, which is not allowed on an async worker.
            runtime.shutdown_background();
        }
    }
}

/// Starts exporting to `target`: the tracer for the tracing layer, and the guard that flushes at the end.
pub(crate) fn start_export(
    target: &ExportTarget,
    default_service_name: &str,
) -> Result<(opentelemetry_sdk::trace::Tracer, TracingGuard), TelemetryError> {
    // The SDK exports from its own thread, outside any async runtime, but the gRPC client needs one:
    // a small runtime of its own keeps export off the service's workers and alive until the last flush.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Tracing(format!("starting the trace exporter: {e}")))?;
    let exporter = {
        let _entered = runtime.enter();
        use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(target.endpoint.clone());
        if target.endpoint.starts_with("https://") {
            builder = builder.with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_enabled_roots(),
            );
        }
        builder
            .build()
            .map_err(|e| TelemetryError::Tracing(format!("building the OTLP exporter: {e}")))?
    };
    let exporter = OnOwnRuntime {
        inner: exporter,
        runtime: runtime.handle().clone(),
        failing: AtomicBool::new(false),
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service_name.to_owned());
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("auscult");
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((
        tracer,
        TracingGuard {
            export: Some((provider, runtime)),
        },
    ))
}

/// The OTLP exporter, driven on the runtime it was built on whatever thread the SDK exports from.
#[derive(Debug)]
struct OnOwnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Handle,
    /// Whether the last export failed, so that a collector that is down is reported once, not per batch.
    failing: AtomicBool,
}

impl SpanExporter for OnOwnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            self.inner.export(batch).await
        } else {
            self.runtime.block_on(self.inner.export(batch))
        };
        match &result {
            Ok(()) => {
                metrics::counter!(SPANS_EXPORTED_TOTAL, "outcome" => "sent").increment(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export works again");
                }
            }
            Err(e) => {
                metrics::counter!(SPANS_EXPORTED_TOTAL, "outcome" => "failed").increment(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("exporting traces failed, {spans} spans lost: {e}");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Spans handed to the OTLP exporter, by `outcome` (`sent`, `failed`).
pub const SPANS_EXPORTED_TOTAL: &str = "auscult_trace_spans_exported_total";

/// A W3C Trace Context `traceparent` (version 00): `00-<trace id>-<parent span id>-<flags>`, 55 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

impl TraceParent {
    /// The length of a version-00 `traceparent`.
    pub const LEN: usize = 55;

    /// Parses a `traceparent`; `None` for anything malformed, which the specification says to ignore
    /// (the frame is then traced from here, or not at all).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != Self::LEN || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let (version, trace, span, flags) = (&text[..2], &text[3..35], &text[36..52], &text[53..]);
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(span) && lower_hex(flags))
            || version == "ff"
        {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: TraceFlags::new(flags),
        })
    }

    /// The `traceparent` of `span`, when it is being exported and was sampled: what to pass on so that
    /// the next hop's spans join its trace.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        if !exporting() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        (span_context.is_valid() && span_context.is_sampled()).then(|| Self {
            trace_id: span_context.trace_id(),
            span_id: span_context.span_id(),
            flags: span_context.trace_flags(),
        })
    }

    /// Makes `span` a child of this remote parent.
    pub fn adopt(&self, span: &tracing::Span) {
        let remote = SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            true,
            TraceState::default(),
        );
        // Fails only for a span that already started its trace, which callers never pass.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }

    /// The trace this parent belongs to, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            self.flags.to_u8()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let parsed = TraceParent::parse(VALID).expect("valid traceparent");
        assert_eq!(parsed.to_string(), VALID);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473\0-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_given() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(ExportTarget::from_vars(vars(&[])).ok(), Some(None));
        assert_eq!(
            ExportTarget::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317")]))
                .ok(),
            Some(Some(ExportTarget {
                endpoint: "http://otel:4317".into()
            }))
        );
        assert_eq!(
            ExportTarget::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ]))
            .ok()
            .flatten()
            .map(|t| t.endpoint),
            Some("http://traces:4317".into())
        );
        assert_eq!(
            ExportTarget::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]))
            .ok(),
            Some(None)
        );
        let refused = ExportTarget::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]));
        assert!(
            matches!(&refused, Err(TelemetryError::Tracing(m)) if m.contains("OTEL_EXPORTER_OTLP_PROTOCOL")),
            "{refused:?}"
        );
        let refused = ExportTarget::from_vars(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "otel.example:4317",
        )]));
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            without_credentials("https://user:secret@otel.example:4317/v1"),
            "https://otel.example:4317/v1"
        );
        assert_eq!(without_credentials("http://otel:4317"), "http://otel:4317");
    }
}
