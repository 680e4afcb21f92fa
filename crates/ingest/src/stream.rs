//! One gateway stream: read frames, validate them, hand valid ones to the batch writer, and send back an
//! acknowledgement for each committed batch and each rejection.
//!
//! Flow control lives here: before a frame is handed on, the stream takes its size from the stream's and the
//! service's memory budgets. While a budget is exhausted the stream stops reading, the HTTP/2 window fills up,
//! and the gateway is slowed down by the transport itself; no frame is buffered beyond the budgets.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use auscult_frame::FrameKey;
use auscult_frame::Limits;
use auscult_proto::ingest::v1 as pb;
use auscult_telemetry::TraceParent;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info_span, warn};

use crate::{
    ack,
    clock::ClockWatch,
    devices::StreamSlot,
    metrics as m,
    writer::{BatchReply, PendingFrame, StreamId, Submitter},
};

/// Everything a stream needs besides its own messages.
#[derive(Debug)]
pub struct StreamContext {
    pub stream_id: StreamId,
    /// The device the stream's token belongs to; frames of any other device end the stream.
    pub device_id: String,
    /// The stream's place among its device's: its pace, and the end of the stream if its token is revoked.
    pub slot: StreamSlot,
    pub limits: Limits,
    /// Gateway clocks further off than this are flagged.
    pub clock_offset_warning: Duration,
    /// Compress 16-bit PCM frames (FLAC) before they are stored.
    pub compress: bool,
    pub submit: Submitter,
    pub service_budget: Arc<Semaphore>,
    pub stream_budget: Arc<Semaphore>,
    pub shutdown: CancellationToken,
}

/// Why a stream ended, for the final status and the metrics.
enum End {
    /// The gateway finished sending and every frame was answered.
    Finished,
    /// The gateway went away; nothing more can be sent to it.
    Gone,
    /// End the stream with this status.
    Status(Status),
}

type Outbound = mpsc::Sender<Result<pb::Ack, Status>>;

/// Runs the stream to its end. The final status (if any) is sent on `out`.
pub async fn run_stream(
    ctx: StreamContext,
    mut inbound: impl Stream<Item = Result<pb::Frame, Status>> + Unpin,
    out: Outbound,
) {
    let (reply_tx, replies) = mpsc::unbounded_channel();
    let mut state = State {
        replies,
        inflight: 0,
        out: &out,
        clock: ClockWatch::new(ctx.clock_offset_warning),
    };
    let mut reading = true;
    let mut end = End::Finished;

    while reading || state.inflight > 0 {
        tokio::select! {
            biased;
            Some(reply) = state.replies.recv() => {
                if let Err(stop) = state.answer(reply).await {
                    // Keep answering what is still in flight, unless the gateway is gone.
                    reading = false;
                    end = stop;
                }
            }
            () = ctx.shutdown.cancelled(), if reading => {
                reading = false;
                end = End::Status(Status::unavailable(
                    "ingest is shutting down: reconnect and resend unacknowledged frames",
                ));
            }
            () = ctx.slot.revoked().cancelled(), if reading => {
                reading = false;
                end = revoked();
            }
            message = inbound.next(), if reading => match message {
                None => reading = false,
                Some(Err(status)) => {
                    reading = false;
                    end = receive_error(status);
                }
                Some(Ok(frame)) => {
                    if let Err(stop) = state.accept(&ctx, frame, &reply_tx).await {
                        reading = false;
                        end = stop;
                    }
                }
            },
        }
        if let End::Gone = end {
            break;
        }
    }

    let code = match end {
        End::Finished => "ok",
        End::Gone => "cancelled",
        End::Status(status) => {
            let code = code_label(status.code());
            let _ = out.send(Err(status)).await;
            code
        }
    };
    metrics::counter!(m::STREAMS_ENDED_TOTAL, "code" => code).increment(1);
    debug!(code, "stream ended");
}

struct State<'a> {
    replies: mpsc::UnboundedReceiver<BatchReply>,
    /// Frames handed to the writer and not yet answered.
    inflight: usize,
    out: &'a Outbound,
    clock: ClockWatch,
}

impl State<'_> {
    /// Validates one frame and hands it on, or rejects it. An `Err` ends the stream.
    async fn accept(
        &mut self,
        ctx: &StreamContext,
        mut frame: pb::Frame,
        reply: &mpsc::UnboundedSender<BatchReply>,
    ) -> Result<(), End> {
        metrics::counter!(m::FRAMES_RECEIVED_TOTAL).increment(1);
        let traceparent = std::mem::take(&mut frame.traceparent);
        if let Some(sent_at) = frame
            .sent_at
            .take()
            .and_then(auscult_proto::timestamp_to_system_time)
        {
            self.clock
                .observe(&ctx.device_id, sent_at, SystemTime::now());
        }
        if frame.device_id != ctx.device_id {
            metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => "wrong_device").increment(1);
            warn!(device = %ctx.device_id, claimed = %frame.device_id, "frame of another device refused");
            return Err(End::Status(Status::permission_denied(format!(
                "this token admits frames of device {:?} only, not {:?}",
                ctx.device_id, frame.device_id
            ))));
        }
        // Everything a device sends counts against its rates, valid or not.
        if let Some(turn) = ctx.slot.pace(frame.samples.len(), Instant::now()) {
            self.wait_turn(ctx, turn).await?;
        }
        let (sensor_id, stream_epoch, seq) =
            (frame.sensor_id.clone(), frame.stream_epoch, frame.seq);
        let mut frame =
            match auscult_proto::to_raw_frame(frame).validate(&ctx.limits, SystemTime::now()) {
                Ok(frame) => frame,
                Err(invalid) => {
                    let reason = auscult_proto::reject_reason(&invalid)
                        .as_str_name()
                        .to_ascii_lowercase();
                    let reason = reason.trim_start_matches("reject_reason_").to_owned();
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => reason).increment(1);
                    debug!(sensor = %sensor_id, seq, "frame rejected: {invalid}");
                    return self
                        .send(ack::rejected(sensor_id, stream_epoch, seq, &invalid))
                        .await;
                }
            };
        if ctx.compress
            && let Err(e) = frame.compress_for_storage()
        {
            // Never a reason to refuse a valid frame: it is stored as received.
            metrics::counter!(m::COMPRESSION_FAILURES_TOTAL).increment(1);
            warn!(sensor = %sensor_id, seq, "storing the frame uncompressed: {e}");
        }
        let span = frame_span(&ctx.device_id, &frame.key, &traceparent);
        if let Some(span) = &span {
            frame.trace_parent = TraceParent::of(span).map(|parent| parent.to_string());
        }
        let bytes = frame.samples.len();
        let permits = self.reserve(ctx, bytes).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(m::INFLIGHT_BYTES).increment(bytes as f64);
        ctx.submit
            .send(PendingFrame {
                frame,
                stream: ctx.stream_id,
                reply: reply.clone(),
                permits,
                span,
            })
            .map_err(|_| {
                End::Status(Status::unavailable(
                    "ingest is shutting down: resend unacknowledged frames",
                ))
            })?;
        self.inflight += 1;
        Ok(())
    }

    /// Waits until `turn`, the time the device's pace lets the frame go on, answering committed batches
    /// meanwhile. The stream is not read while it waits, so HTTP/2 flow control holds the gateway back.
    async fn wait_turn(&mut self, ctx: &StreamContext, turn: Instant) -> Result<(), End> {
        let waited = Instant::now();
        let sleep = tokio::time::sleep_until(turn.into());
        tokio::pin!(sleep);
        let outcome = loop {
            tokio::select! {
                biased;
                Some(reply) = self.replies.recv() => {
                    if let Err(stop) = self.answer(reply).await {
                        break Err(stop);
                    }
                }
                () = ctx.slot.revoked().cancelled() => break Err(revoked()),
                () = ctx.shutdown.cancelled() => break Err(End::Status(Status::unavailable(
                    "ingest is shutting down: reconnect and resend unacknowledged frames",
                ))),
                () = &mut sleep => break Ok(()),
            }
        };
        metrics::histogram!(m::DEVICE_PACE_WAIT_SECONDS).record(waited.elapsed().as_secs_f64());
        outcome
    }

    /// Takes `bytes` from the stream's budget, then the service's, answering committed batches while waiting
    /// (their frames are what frees the budget).
    async fn reserve(
        &mut self,
        ctx: &StreamContext,
        bytes: usize,
    ) -> Result<Vec<OwnedSemaphorePermit>, End> {
        // Settings validation keeps budgets below 4 GiB and frames below the message limit.
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        let mut permits = Vec::with_capacity(2);
        for budget in [&ctx.stream_budget, &ctx.service_budget] {
            let permit = loop {
                tokio::select! {
                    biased;
                    Some(reply) = self.replies.recv() => self.answer(reply).await?,
                    permit = Arc::clone(budget).acquire_many_owned(n) => {
                        break permit.map_err(|_| End::Status(Status::unavailable("ingest is shutting down")))?;
                    }
                }
            };
            permits.push(permit);
        }
        Ok(permits)
    }

    /// Turns a writer's reply into an acknowledgement. A failed batch ends the stream (after its other frames
    /// are answered): the gateway will resend on a new stream, perhaps to a healthier replica.
    async fn answer(&mut self, reply: BatchReply) -> Result<(), End> {
        match reply {
            BatchReply::Committed(outcomes) => {
                self.inflight -= outcomes.len();
                self.send(ack::committed(outcomes)).await
            }
            BatchReply::Refused { key, error } => {
                self.inflight -= 1;
                self.send(ack::refused(key, &error)).await
            }
            BatchReply::Failed { frames, error } => {
                self.inflight -= frames;
                Err(End::Status(Status::unavailable(format!(
                    "frames could not be stored ({}); reconnect and resend unacknowledged frames",
                    if error.is_transient() {
                        "database unavailable"
                    } else {
                        "storage error"
                    }
                ))))
            }
        }
    }

    async fn send(&self, ack: pb::Ack) -> Result<(), End> {
        self.out.send(Ok(ack)).await.map_err(|_| End::Gone)
    }
}

/// A span for one frame, from its arrival to its commit, while traces are exported: the child of the
/// gateway's span when the frame carries its `traceparent`, otherwise the root of a trace of its own (which
/// the sampler may drop).
fn frame_span(device: &str, key: &FrameKey, traceparent: &str) -> Option<tracing::Span> {
    if !auscult_telemetry::trace::exporting() {
        return None;
    }
    let span = info_span!(
        parent: None,
        "frame",
        device,
        sensor = %key.sensor_id,
        epoch = key.stream_epoch,
        seq = key.seq,
        outcome = tracing::field::Empty,
        batch_frames = tracing::field::Empty,
        commit_ms = tracing::field::Empty,
    );
    if !traceparent.is_empty() {
        match TraceParent::parse(traceparent) {
            Some(parent) => parent.adopt(&span),
            // The specification says to ignore it; the count shows a gateway that sends garbage.
            None => metrics::counter!(m::TRACE_CONTEXTS_IGNORED_TOTAL).increment(1),
        }
    }
    Some(span)
}

fn revoked() -> End {
    metrics::counter!(m::STREAMS_REVOKED_TOTAL).increment(1);
    End::Status(Status::unauthenticated(
        "the token this stream was opened with has been revoked",
    ))
}

/// What a receive error means for the stream.
fn receive_error(status: Status) -> End {
    match status.code() {
        // tonic reports a message over the size limit as OUT_OF_RANGE while decoding it.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "message_too_large")
                .increment(1);
            warn!("message refused: {}", status.message());
            End::Status(Status::resource_exhausted(format!(
                "message too large: {}",
                status.message()
            )))
        }
        _ => {
            debug!("stream broken: {status}");
            End::Gone
        }
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "other",
    }
}
