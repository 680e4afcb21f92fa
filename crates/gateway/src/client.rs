//! The gateway client: streams frames to ingest, keeps each one until it is acknowledged or rejected, and after
//! any break reconnects and resends everything still unacknowledged. Exactly-once storage follows from this
//! at-least-once sending and ingest's unique frame key.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use auscult_proto::ingest::v1::{self as pb, ingest_client::IngestClient};
use auscult_telemetry::TraceParent;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request,
    metadata::MetadataValue,
    transport::{ClientTlsConfig, Endpoint},
};
use tracing::{debug, info, info_span, warn};

use crate::source::{FrameSource, SourceError};

/// How to reach ingest and how to behave on the way.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Ingest addresses, e.g. `http://127.0.0.1:50051` or `https://ingest.plant.example:443`. With
    /// several (one per ingest replica, no load balancer in between), a broken or refused connection
    /// moves on to the next one.
    pub endpoints: Vec<String>,
    pub token: String,
    pub tls: Option<ClientTlsConfig>,
    /// Most frames sent but not yet acknowledged; sending waits when reached (the gateway's memory bound).
    pub window: usize,
    /// Frames per second over all sensors; `None` sends as fast as ingest accepts.
    pub rate: Option<f64>,
    /// Drop the connection after every this many new frames (simulates flaky LTE links).
    pub cut_every: Option<u64>,
    /// Give up when no connection could be made for this long.
    pub give_up_after: Duration,
    /// Inside a stream, how long frames may wait unanswered (or a connection and its stream take to open)
    /// before the stream is abandoned for the next ingest address: a replica that froze, or whose
    /// database stopped answering, must not hold the gateway.
    pub progress_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            token: token.into(),
            tls: None,
            window: 1024,
            rate: None,
            cut_every: None,
            give_up_after: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a gateway run ended early.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid endpoint {endpoint}: {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("invalid token: it must be printable ASCII")]
    Token,
    #[error("ingest refused the stream ({code:?}): {message}")]
    Refused { code: Code, message: String },
    #[error("no answer from ingest at {endpoint} for {waited:?}: {last_error}")]
    Unreachable {
        endpoint: String,
        waited: Duration,
        last_error: String,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What happened during a run. `acked + rejected == sent` when the run completes.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Distinct frames sent (a resend is not counted again).
    pub sent: u64,
    /// Frames acknowledged as durable.
    pub acked: u64,
    /// Frames rejected by ingest.
    pub rejected: u64,
    /// Sends of frames that had been sent before (after a reconnect).
    pub resent: u64,
    /// Acknowledged frames that ingest already had (resends that had in fact been stored).
    pub duplicates: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    pub elapsed: Duration,
    /// Acknowledgement latency percentiles, from a frame's last send to its acknowledgement.
    pub ack_p50: Duration,
    pub ack_p99: Duration,
    /// Every acknowledgement latency in microseconds, for merging the runs of several gateways.
    pub ack_latency_us: Histogram<u64>,
    /// Every rejection received, for reporting.
    pub rejections: Vec<pb::Rejection>,
}

impl Summary {
    fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            sent: 0,
            acked: 0,
            rejected: 0,
            resent: 0,
            duplicates: 0,
            reconnects: 0,
            elapsed: Duration::ZERO,
            ack_p50: Duration::ZERO,
            ack_p99: Duration::ZERO,
            // 1 µs to 10 min, 3 significant digits.
            ack_latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            rejections: Vec::new(),
        })
    }
}

impl Summary {
    /// Acknowledged frames per second of the whole run.
    pub fn frames_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        if secs > 0.0 {
            self.acked as f64 / secs
        } else {
            0.0
        }
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub resent: AtomicU64,
}

/// Things a caller may watch as they happen (tests do, to act at precise moments).
#[derive(Debug, Clone)]
pub enum Event {
    Connected,
    /// These ranges were acknowledged as durable.
    Acked(Vec<pb::FrameRange>),
    Rejected(pb::Rejection),
    /// The stream broke; unacknowledged frames will be resent.
    Disconnected(String),
}

/// (sensor, epoch, seq): the key of a frame within one device.
type Key = (String, u64, u64);

/// A frame kept until it is acknowledged.
struct Unacked {
    frame: pb::Frame,
    sent_at: Instant,
    /// The frame's span while traces are exported: from its first send to its answer, the root of the
    /// frame's trace through ingest, the listener and analysis.
    span: Option<tracing::Span>,
}

/// A gateway streaming one source to ingest.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    progress: Arc<Progress>,
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            config,
            progress: Arc::default(),
            events: None,
        }
    }

    /// Sends [`Event`]s to `events` as they happen.
    pub fn with_events(mut self, events: mpsc::UnboundedSender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Counters that change while [`Gateway::run`] runs.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Streams every frame of `source` until each is acknowledged or rejected.
    pub async fn run(&self, mut source: impl FrameSource) -> Result<Summary, GatewayError> {
        let endpoints = self
            .config
            .endpoints
            .iter()
            .map(|address| self.endpoint(address))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(GatewayError::Endpoint {
                endpoint: String::new(),
                detail: "no ingest address".into(),
            });
        }
        let mut current = 0;
        let auth: MetadataValue<_> = format!("Bearer {}", self.config.token)
            .parse()
            .map_err(|_| GatewayError::Token)?;
        let started = Instant::now();
        let summary = Summary::new().map_err(|e| GatewayError::Endpoint {
            endpoint: self.config.endpoints.join(","),
            detail: e.to_string(),
        })?;
        let mut run = Run {
            unacked: BTreeMap::new(),
            summary,
            source_done: false,
            produced: 0,
            started,
        };
        let mut connections = 0u64;
        // Progress is an answer from ingest; a link that connects but never answers is as dead as one
        // that does not connect, and both are retried with backoff until `give_up_after`.
        let mut last_progress = Instant::now();
        let mut backoff = Duration::from_millis(50);
        while !(run.source_done && run.unacked.is_empty()) {
            let answered_before = run.summary.acked + run.summary.rejected;
            let connected =
                tokio::time::timeout(self.config.progress_timeout, endpoints[current].connect())
                    .await;
            let failure = match connected {
                Err(_) => format!("no connection within {:?}", self.config.progress_timeout),
                Ok(Err(e)) => describe(&e),
                Ok(Ok(channel)) => {
                    if connections > 0 {
                        run.summary.reconnects += 1;
                    }
                    connections += 1;
                    self.emit(Event::Connected);
                    let outcome = self
                        .stream_once(IngestClient::new(channel), &auth, &mut source, &mut run)
                        .await;
                    match outcome {
                        Ok(()) => continue,
                        Err(StreamEnd::Fatal(error)) => return Err(error),
                        Err(StreamEnd::Broken(reason)) => {
                            info!(
                                unacked = run.unacked.len(),
                                "stream broken, reconnecting: {reason}"
                            );
                            self.emit(Event::Disconnected(reason.clone()));
                            reason
                        }
                    }
                }
            };
            if run.summary.acked + run.summary.rejected > answered_before {
                last_progress = Instant::now();
                backoff = Duration::from_millis(50);
                continue;
            }
            // This address made no progress: try the next ingest replica.
            current = (current + 1) % endpoints.len();
            let waited = last_progress.elapsed();
            if waited > self.config.give_up_after {
                return Err(GatewayError::Unreachable {
                    endpoint: self.config.endpoints.join(","),
                    waited,
                    last_error: failure,
                });
            }
            debug!("no progress, retrying in {backoff:?}: {failure}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        run.summary.elapsed = started.elapsed();
        run.summary.ack_p50 =
            Duration::from_micros(run.summary.ack_latency_us.value_at_quantile(0.5));
        run.summary.ack_p99 =
            Duration::from_micros(run.summary.ack_latency_us.value_at_quantile(0.99));
        Ok(run.summary)
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, GatewayError> {
        let invalid = |detail: String| GatewayError::Endpoint {
            endpoint: address.to_owned(),
            detail,
        };
        let mut endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(4 << 20));
        if let Some(tls) = &self.config.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| invalid(e.to_string()))?;
        }
        Ok(endpoint)
    }

    /// One stream: resend what is unacknowledged, then send new frames, until the source is exhausted and
    /// everything is answered (`Ok`), or the stream breaks.
    async fn stream_once(
        &self,
        mut client: IngestClient<tonic::transport::Channel>,
        auth: &MetadataValue<tonic::metadata::Ascii>,
        source: &mut impl FrameSource,
        run: &mut Run,
    ) -> Result<(), StreamEnd> {
        // The request queue is small: the window, not this queue, bounds what is in flight.
        let (tx, rx) = mpsc::channel::<pb::Frame>(16);
        // `sent_at` is stamped as the transport takes the frame, not when it is queued: a queue held
        // up by ingest's flow control must not read as a clock that runs behind.
        let mut request = Request::new(ReceiverStream::new(rx).map(|mut frame: pb::Frame| {
            frame.sent_at = Some(auscult_proto::system_time_to_timestamp(SystemTime::now()));
            frame
        }));
        request.metadata_mut().insert("authorization", auth.clone());
        // Ingest answers with headers right after authentication, before reading any frame.
        let mut acks =
            tokio::time::timeout(self.config.progress_timeout, client.stream_frames(request))
                .await
                .map_err(|_| StreamEnd::Broken("ingest did not open the stream in time".into()))?
                .map_err(classify)?
                .into_inner();
        // Frames waiting for an answer must get one within progress_timeout of the last answer.
        let mut last_answer = Instant::now();
        let mut tx = Some(tx);
        let mut resend: std::collections::VecDeque<Key> = run.unacked.keys().cloned().collect();
        let mut new_on_this_stream = 0u64;
        loop {
            if run.source_done && resend.is_empty() && run.unacked.is_empty() {
                // Closing our side tells ingest we are done; it ends the stream once all is answered.
                tx = None;
            }
            // Resends are already counted in the window: only new frames wait for room in it. (A
            // stream that broke with the window full must still be able to resend.)
            let can_send = tx.is_some()
                && (!resend.is_empty()
                    || (run.unacked.len() < self.config.window && !run.source_done));
            let due = if resend.is_empty() {
                run.next_due(self.config.rate)
            } else {
                None
            };
            let answer_due =
                tokio::time::Instant::from_std(last_answer + self.config.progress_timeout);
            tokio::select! {
                biased;
                message = acks.message() => match message {
                    Ok(Some(ack)) => {
                        last_answer = Instant::now();
                        self.absorb(ack, run);
                    }
                    Ok(None) if run.source_done && run.unacked.is_empty() => return Ok(()),
                    Ok(None) => return Err(StreamEnd::Broken("stream closed by ingest".into())),
                    Err(status) => return Err(classify(status)),
                },
                () = tokio::time::sleep_until(answer_due), if !run.unacked.is_empty() => {
                    return Err(StreamEnd::Broken(format!(
                        "no answer from ingest for {:?} with {} frames unacknowledged",
                        self.config.progress_timeout,
                        run.unacked.len()
                    )));
                }
                () = sleep_until(due), if can_send => {
                    let frame = if let Some(key) = resend.pop_front() {
                        let Some(entry) = run.unacked.get_mut(&key) else { continue };
                        entry.sent_at = Instant::now();
                        run.summary.resent += 1;
                        self.progress.resent.fetch_add(1, Ordering::Relaxed);
                        entry.frame.clone()
                    } else {
                        let Some(frame) = source.next_frame().map_err(|e| StreamEnd::Fatal(e.into()))? else {
                            run.source_done = true;
                            continue;
                        };
                        if run.unacked.is_empty() {
                            // Nothing was waiting for an answer: the clock starts with this frame.
                            last_answer = Instant::now();
                        }
                        run.produced += 1;
                        run.summary.sent += 1;
                        self.progress.sent.fetch_add(1, Ordering::Relaxed);
                        new_on_this_stream += 1;
                        let (frame, span) = traced(frame);
                        run.unacked.insert(key_of(&frame), Unacked { frame: frame.clone(), sent_at: Instant::now(), span });
                        frame
                    };
                    let Some(sender) = &tx else { continue };
                    // Ingest slows a gateway by not reading (flow control); one that never reads again
                    // is as stuck as one that never answers.
                    match tokio::time::timeout(self.config.progress_timeout, sender.send(frame)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(self.final_words(&mut acks, run).await),
                        Err(_) => return Err(StreamEnd::Broken(format!(
                            "ingest stopped reading for {:?}", self.config.progress_timeout
                        ))),
                    }
                    if self.config.cut_every.is_some_and(|k| k > 0 && new_on_this_stream >= k) {
                        return Err(StreamEnd::Broken(format!("connection cut after {new_on_this_stream} new frames")));
                    }
                }
            }
        }
    }

    /// Ingest stopped reading our frames: take the acknowledgements it still sends, down to its final
    /// status, which says why (shutting down, refused, …).
    async fn final_words(&self, acks: &mut tonic::Streaming<pb::Ack>, run: &mut Run) -> StreamEnd {
        let drain = async {
            loop {
                match acks.message().await {
                    Ok(Some(ack)) => self.absorb(ack, run),
                    Ok(None) => return StreamEnd::Broken("stream closed by ingest".into()),
                    Err(status) => return classify(status),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .unwrap_or_else(|_| StreamEnd::Broken("ingest stopped reading and answering".into()))
    }

    /// Applies an acknowledgement: durable and rejected frames are forgotten.
    fn absorb(&self, ack: pb::Ack, run: &mut Run) {
        let now = Instant::now();
        let mut acked = 0u64;
        for range in &ack.durable {
            let from = (range.sensor_id.clone(), range.stream_epoch, range.first_seq);
            let to = (range.sensor_id.clone(), range.stream_epoch, range.last_seq);
            let keys: Vec<Key> = run
                .unacked
                .range(from..=to)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                if let Some(entry) = run.unacked.remove(&key) {
                    let micros = u64::try_from(now.duration_since(entry.sent_at).as_micros())
                        .unwrap_or(u64::MAX);
                    let _ = run.summary.ack_latency_us.record(micros.max(1));
                    if let Some(span) = entry.span {
                        span.record("outcome", "durable");
                    }
                    acked += 1;
                }
            }
        }
        run.summary.acked += acked;
        run.summary.duplicates += u64::from(ack.duplicates);
        self.progress.acked.fetch_add(acked, Ordering::Relaxed);
        for rejection in ack.rejected {
            let key = (
                rejection.sensor_id.clone(),
                rejection.stream_epoch,
                rejection.seq,
            );
            if let Some(entry) = run.unacked.remove(&key) {
                if let Some(span) = entry.span {
                    span.record("outcome", "rejected");
                }
                run.summary.rejected += 1;
                self.progress.rejected.fetch_add(1, Ordering::Relaxed);
            }
            warn!(sensor = %rejection.sensor_id, seq = rejection.seq, "frame rejected: {}", rejection.detail);
            self.emit(Event::Rejected(rejection.clone()));
            run.summary.rejections.push(rejection);
        }
        if !ack.durable.is_empty() {
            self.emit(Event::Acked(ack.durable));
        }
    }

    fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

struct Run {
    unacked: BTreeMap<Key, Unacked>,
    summary: Summary,
    source_done: bool,
    /// New frames taken from the source so far (for pacing).
    produced: u64,
    started: Instant,
}

impl Run {
    /// When the next new frame is due under `rate`; `None` means now.
    fn next_due(&self, rate: Option<f64>) -> Option<tokio::time::Instant> {
        let rate = rate.filter(|r| *r > 0.0)?;
        #[allow(clippy::cast_precision_loss)]
        let offset = Duration::from_secs_f64(self.produced as f64 / rate);
        Some(tokio::time::Instant::from_std(self.started + offset))
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

enum StreamEnd {
    /// Reconnect and resend.
    Broken(String),
    /// Retrying cannot help.
    Fatal(GatewayError),
}

/// Statuses that resending cannot cure end the run; everything else is a broken link.
fn classify(status: tonic::Status) -> StreamEnd {
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::InvalidArgument => StreamEnd::Fatal(GatewayError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        }),
        _ => StreamEnd::Broken(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// `frame` with a span of its own and that span's `traceparent`, while traces are exported.
fn traced(mut frame: pb::Frame) -> (pb::Frame, Option<tracing::Span>) {
    if !auscult_telemetry::trace::exporting() {
        return (frame, None);
    }
    let span = info_span!(
        parent: None,
        "frame",
        device = %frame.device_id,
        sensor = %frame.sensor_id,
        epoch = frame.stream_epoch,
        seq = frame.seq,
        outcome = tracing::field::Empty,
    );
    if let Some(parent) = TraceParent::of(&span) {
        frame.traceparent = parent.to_string();
    }
    (frame, Some(span))
}

fn key_of(frame: &pb::Frame) -> Key {
    (frame.sensor_id.clone(), frame.stream_epoch, frame.seq)
}

fn describe(error: &tonic::transport::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}
