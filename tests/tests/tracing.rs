//! Following a frame: with OTLP export on, the frames `auscult simulate` sends are traced gateway → ingest →
//! job table → listener → analysis, every hop a span in the same trace and the child of the hop before,
//! received by a real OTLP/gRPC collector endpoint.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use auscult_e2e::{AnalysisProcess, Stack, activate_shipped_model, start_listener};
use auscult_proto::ingest::v1::{self as pb, ingest_client::IngestClient};
use auscult_testkit::wait_for;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, metadata::MetadataValue};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP trace collector that keeps what it receives.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
        self.spans
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .extend(received);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let address = listener.local_addr().expect("collector address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A frame's whole way, one span per hop, each the parent of the next.
#[derive(Debug)]
struct FrameTrace {
    gateway: ReceivedSpan,
    ingest: ReceivedSpan,
    job: ReceivedSpan,
    score: ReceivedSpan,
}

/// The complete frame traces among `spans`: for each gateway frame span, the ingest span that is its child,
/// the listener's job span that is the ingest span's child, and the analysis span that is the job's.
fn frame_traces(spans: &[ReceivedSpan]) -> Vec<FrameTrace> {
    let child_of = |parent: &ReceivedSpan, service: &str, name: &str| {
        spans
            .iter()
            .find(|s| {
                s.service == service
                    && s.name == name
                    && s.trace_id == parent.trace_id
                    && s.parent_span_id == parent.span_id
            })
            .cloned()
    };
    spans
        .iter()
        .filter(|s| s.service == "auscult" && s.name == "frame")
        .filter_map(|gateway| {
            let ingest = child_of(gateway, "auscult-ingest", "frame")?;
            let job = child_of(&ingest, "auscult-listener", "job")?;
            let score = child_of(&job, "auscult-analysis", "score")?;
            Some(FrameTrace {
                gateway: gateway.clone(),
                ingest,
                job,
                score,
            })
        })
        .collect()
}

#[tokio::test]
async fn a_frame_is_followed_from_the_gateway_to_its_verdict_in_one_trace() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export often, so that the test does not wait out the default five seconds.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let stack = Stack::start(&otel).await;
    let mut db = stack.db().await;
    activate_shipped_model(&mut db).await;
    let url = stack.postgres.url();
    let analysis = AnalysisProcess::start_with(&url, &otel, None).await;
    let listener = start_listener(&url, "listener-t", &[analysis.endpoint()], &otel);

    let device = "gw-traced";
    let token = stack.add_device(device).await;
    stack
        .simulate_with_env(
            device,
            &token,
            &[
                "--sensors",
                "1",
                "--frames",
                "3",
                "--rate",
                "0",
                "--epoch",
                "1",
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        )
        .await;

    let traces = wait_for(Duration::from_secs(90), || async {
        let traces = frame_traces(&collector.spans());
        (traces.len() == 3).then_some(traces)
    })
    .await;
    let Some(traces) = traces else {
        let seen: Vec<(String, String)> = collector
            .spans()
            .into_iter()
            .map(|s| (s.service, s.name))
            .collect();
        panic!(
            "three complete frame traces never arrived; spans seen: {seen:?}\ningest:\n{}\nlistener:\n{}\nanalysis:\n{}",
            stack.ingest.log(),
            listener.log(),
            analysis.process.log()
        );
    };

    let mut seqs: Vec<String> = Vec::new();
    for trace in &traces {
        assert_eq!(trace.gateway.attributes["outcome"], "durable", "{trace:?}");
        assert_eq!(trace.ingest.attributes["outcome"], "stored", "{trace:?}");
        assert_eq!(
            trace.gateway.attributes["seq"],
            trace.ingest.attributes["seq"]
        );
        assert!(
            ["normal", "anomalous"].contains(&trace.job.attributes["outcome"].as_str()),
            "{trace:?}"
        );
        assert_eq!(
            trace.job.attributes["frame_id"],
            trace.score.attributes["frame_id"]
        );
        assert_eq!(trace.score.attributes["outcome"], "verdict", "{trace:?}");
        seqs.push(trace.ingest.attributes["seq"].clone());
    }
    seqs.sort();
    assert_eq!(seqs, ["0", "1", "2"], "one trace per frame");

    // The trace crossed the job table: each job row carries the ingest span it continues.
    let rows = db
        .query(
            "SELECT j.trace_parent FROM analysis_jobs j JOIN frames f ON f.id = j.frame_id
             WHERE f.device_id = $1",
            &[&device],
        )
        .await
        .expect("jobs");
    let stored: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored.len(), 3);
    for trace in &traces {
        let expected = format!(
            "00-{}-{}-01",
            hex(&trace.ingest.trace_id),
            hex(&trace.ingest.span_id)
        );
        assert!(
            stored.contains(&Some(expected.clone())),
            "{expected} not among {stored:?}"
        );
    }

    // A malformed traceparent never costs the frame: it is stored, and the ignored context is counted.
    let gateway_token = stack.add_device("gw-garbled").await;
    let mut frame =
        auscult_e2e::pcm16_frame("gw-garbled", "mic-0", 0, &auscult_e2e::one_second_pcm16());
    frame.traceparent = "00-not-a-trace-context".into();
    let mut client = IngestClient::connect(stack.endpoint())
        .await
        .expect("connect");
    let mut request = Request::new(tokio_stream::iter(vec![frame]));
    let bearer: MetadataValue<_> = format!("Bearer {gateway_token}")
        .parse()
        .expect("ascii token");
    request.metadata_mut().insert("authorization", bearer);
    let mut acks = client
        .stream_frames(request)
        .await
        .expect("stream")
        .into_inner();
    let mut durable: Vec<pb::FrameRange> = Vec::new();
    while let Some(ack) = acks.next().await {
        durable.extend(ack.expect("ack").durable);
    }
    assert_eq!(
        durable.len(),
        1,
        "the frame with a garbled traceparent is stored"
    );
    let ignored = auscult_e2e::metric(
        &stack.metrics(),
        "auscult_ingest_trace_contexts_ignored_total",
    );
    assert_eq!(ignored, Some(1.0));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
