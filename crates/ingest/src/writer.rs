//! The batch writer: frames from every stream are committed in batches, one transaction each, by a few
//! writer tasks. Batching across streams is what makes durability affordable: the cost of a commit (an
//! fsync) is shared by every frame in it, and with several writers the disk always has a commit in flight.
//!
//! Each sensor stream's frames always go to the same writer, which commits its batches one after the
//! other: a stream's frames become visible in the order they arrived. Listeners rely on that — a frame is
//! judged with the verdicts of the frames before it, and a later frame committed before an earlier one
//! would be claimed and judged without it. A frame's memory budget (its permits) is released only after its
//! batch is committed and its outcome sent back to its stream.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use auscult_frame::{Frame, FrameKey};
use auscult_store::{InsertOutcome, Pool, StoreError};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::{metrics as m, settings::BatchSettings};

/// Identifies the stream a frame came from, so outcomes go back to it.
pub type StreamId = u64;

/// A validated frame waiting for its batch.
#[derive(Debug)]
pub struct PendingFrame {
    pub frame: Frame,
    pub stream: StreamId,
    pub reply: ReplyTo,
    /// Memory budget held until the frame is committed (or its batch failed).
    #[expect(dead_code, reason = "held only so that dropping it returns the budget")]
    pub permits: Vec<OwnedSemaphorePermit>,
    /// The frame's span while traces are exported, from its arrival to its commit.
    pub span: Option<tracing::Span>,
}

/// What a stream learns about its frames in one batch.
#[derive(Debug)]
pub enum BatchReply {
    /// The batch committed; the outcome of each of this stream's frames.
    Committed(Vec<(FrameKey, InsertOutcome)>),
    /// The batch failed; none of these frames is known to be stored.
    Failed {
        frames: usize,
        error: Arc<StoreError>,
    },
    /// The database refused this frame itself (it failed alone after its batch was split); final.
    Refused {
        key: FrameKey,
        error: Arc<StoreError>,
    },
}

/// Where a stream receives its batch replies.
pub type ReplyTo = mpsc::UnboundedSender<BatchReply>;

/// Where streams submit frames: each sensor stream to its own writer's queue.
#[derive(Debug, Clone)]
pub struct Submitter {
    queues: Arc<[mpsc::UnboundedSender<PendingFrame>]>,
}

impl Submitter {
    /// Queues `pending` for the writer of its stream; fails once the writers are gone (shutdown).
    pub fn send(&self, pending: PendingFrame) -> Result<(), WritersGone> {
        let writer = writer_of(&pending.frame.key, self.queues.len());
        self.queues[writer].send(pending).map_err(|_| WritersGone)
    }
}

/// The writers have stopped (the service is shutting down): the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritersGone;

/// The writer that commits the frames of `key`'s sensor stream: the same one for every frame of it.
fn writer_of(key: &FrameKey, writers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same stream maps to the same writer for the life of the process.
    let mut hasher = std::hash::DefaultHasher::new();
    (&key.device_id, &key.sensor_id, key.stream_epoch).hash(&mut hasher);
    usize::try_from(hasher.finish() % writers.max(1) as u64).unwrap_or(0)
}

/// Starts `settings.writers` writer tasks on `pool`; they run until the submitter is dropped and their queues
/// are empty (so shutdown commits everything already submitted), or until `abort` is cancelled.
pub fn spawn_writers(
    settings: &BatchSettings,
    pool: Pool,
    tracker: &tokio_util::task::TaskTracker,
    abort: CancellationToken,
) -> Submitter {
    let mut queues = Vec::with_capacity(settings.writers);
    for writer in 0..settings.writers {
        let (submit, mut queue) = mpsc::unbounded_channel();
        queues.push(submit);
        let pool = pool.clone();
        let settings = settings.clone();
        let abort = abort.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = write_batches(writer, &settings, &pool, &mut queue) => {}
                () = abort.cancelled() => warn!(writer, "writer aborted with frames possibly uncommitted"),
            }
        });
    }
    Submitter {
        queues: queues.into(),
    }
}

async fn write_batches(
    writer: usize,
    settings: &BatchSettings,
    pool: &Pool,
    queue: &mut mpsc::UnboundedReceiver<PendingFrame>,
) {
    let mut failures = 0u32;
    loop {
        let batch = gather(queue, settings).await;
        let Some(batch) = batch else { return };
        let frames = batch.len();
        let bytes = sample_bytes(&batch);
        let span = info_span!("batch", writer, frames, bytes);
        let ok = commit(pool, batch, bytes, settings.commit_timeout)
            .instrument(span)
            .await;
        if ok {
            failures = 0;
        } else {
            // Back off so that a database outage does not turn into a hot loop of failing transactions.
            failures = failures.saturating_add(1);
            tokio::time::sleep(Duration::from_millis(50u64 << failures.min(6))).await;
        }
    }
}

/// Waits for a first frame, then gathers more until a bound is reached or `max_delay` has passed. `None` once
/// the queue is closed and empty.
async fn gather(
    queue: &mut mpsc::UnboundedReceiver<PendingFrame>,
    settings: &BatchSettings,
) -> Option<Vec<PendingFrame>> {
    let first = queue.recv().await?;
    let deadline = tokio::time::Instant::now() + settings.max_delay;
    let mut bytes = first.frame.samples.len();
    let mut batch = vec![first];
    while batch.len() < settings.max_frames && bytes < settings.max_bytes {
        let next = match queue.try_recv() {
            Ok(next) => next,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        bytes += next.frame.samples.len();
        batch.push(next);
    }
    Some(batch)
}

/// Bytes of audio the frames of `batch` hold (what they take from the in-flight budget).
fn sample_bytes(batch: &[PendingFrame]) -> usize {
    batch.iter().map(|p| p.frame.samples.len()).sum()
}

/// Commits one batch and tells each stream what became of its frames. Returns whether the commit succeeded.
fn commit(
    pool: &Pool,
    batch: Vec<PendingFrame>,
    bytes: usize,
    commit_timeout: std::time::Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
    Box::pin(commit_batch(pool, batch, bytes, commit_timeout))
}

async fn commit_batch(
    pool: &Pool,
    mut batch: Vec<PendingFrame>,
    bytes: usize,
    commit_timeout: std::time::Duration,
) -> bool {
    let started = Instant::now();
    let result = async {
        let mut client = pool.get().await?;
        let frames: Vec<&Frame> = batch.iter().map(|p| &p.frame).collect();
        let insert = auscult_store::insert_frames(&mut client, &frames, SystemTime::now());
        match tokio::time::timeout(commit_timeout, insert).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The connection may still be waiting for its COMMIT: it must never carry another
                // batch, so it leaves the pool and closes.
                drop(auscult_store::Client::take(client));
                Err(StoreError::NoAnswer(commit_timeout))
            }
        }
    }
    .await;
    let elapsed = started.elapsed();

    // A batch the database refuses for good (a frame it cannot store) is split to find the frame(s) at
    // fault: each half is committed on its own, down to single frames, so that one device's bad frame
    // never costs the other frames of its batch — or the other streams in it — their acknowledgement.
    if let Err(error) = &result
        && error.is_refusal()
        && batch.len() > 1
    {
        metrics::counter!(m::BATCH_SPLITS_TOTAL).increment(1);
        let right = batch.split_off(batch.len() / 2);
        let right_bytes = sample_bytes(&right);
        let left_bytes = bytes.saturating_sub(right_bytes);
        warn!(
            frames = batch.len() + right.len(),
            "the database refused a batch; committing its halves apart: {error}"
        );
        let left_ok = commit(pool, batch, left_bytes, commit_timeout).await;
        let right_ok = commit(pool, right, right_bytes, commit_timeout).await;
        return left_ok && right_ok;
    }

    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(m::INFLIGHT_BYTES).decrement(bytes as f64);
    let mut by_stream: HashMap<StreamId, (ReplyTo, Vec<(FrameKey, InsertOutcome)>)> =
        HashMap::new();
    match result {
        Ok(outcomes) => {
            let frames_in_batch = batch.len();
            metrics::histogram!(m::BATCH_COMMIT_SECONDS).record(elapsed.as_secs_f64());
            #[allow(clippy::cast_precision_loss)]
            metrics::histogram!(m::BATCH_SIZE_FRAMES).record(batch.len() as f64);
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                record_outcome(&pending.frame, outcome);
                if let Some(span) = &pending.span {
                    span.record("outcome", outcome_label(outcome));
                    span.record("batch_frames", frames_in_batch);
                    span.record("commit_ms", elapsed.as_secs_f64() * 1000.0);
                }
                by_stream
                    .entry(pending.stream)
                    .or_insert_with(|| (pending.reply.clone(), Vec::new()))
                    .1
                    .push((pending.frame.key, outcome));
                // The rest of `pending`, samples and permits, drops here: the memory is free again.
            }
            debug!(elapsed_ms = elapsed.as_millis(), "batch committed");
            for (reply, frames) in by_stream.into_values() {
                // A stream that went away no longer needs its acknowledgements; its frames are stored.
                let _ = reply.send(BatchReply::Committed(frames));
            }
            true
        }
        Err(error) if error.is_refusal() => {
            // A single frame the database will never take: refused alone, its neighbours unaffected.
            let error = Arc::new(error);
            for pending in batch {
                warn!(key = ?pending.frame.key, "the database refused a frame: {error}");
                if let Some(span) = &pending.span {
                    span.record("outcome", "storage_refused");
                }
                metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "storage_refused")
                    .increment(1);
                let _ = pending.reply.send(BatchReply::Refused {
                    key: pending.frame.key,
                    error: Arc::clone(&error),
                });
            }
            true
        }
        Err(error) => {
            metrics::counter!(m::BATCH_FAILURES_TOTAL).increment(1);
            warn!(
                frames = batch.len(),
                "batch failed, its streams will be asked to resend: {error}"
            );
            let error = Arc::new(error);
            let mut counts: HashMap<StreamId, (ReplyTo, usize)> = HashMap::new();
            for pending in batch {
                if let Some(span) = &pending.span {
                    span.record("outcome", "failed");
                }
                counts
                    .entry(pending.stream)
                    .or_insert_with(|| (pending.reply.clone(), 0))
                    .1 += 1;
            }
            for (reply, frames) in counts.into_values() {
                let _ = reply.send(BatchReply::Failed {
                    frames,
                    error: Arc::clone(&error),
                });
            }
            false
        }
    }
}

fn outcome_label(outcome: InsertOutcome) -> &'static str {
    match outcome {
        InsertOutcome::Stored => "stored",
        InsertOutcome::Duplicate => "duplicate",
        InsertOutcome::Conflict => "conflicting_duplicate",
    }
}

fn record_outcome(frame: &Frame, outcome: InsertOutcome) {
    match outcome {
        InsertOutcome::Stored => {
            metrics::counter!(m::FRAMES_STORED_TOTAL).increment(1);
            metrics::counter!(m::BYTES_STORED_TOTAL).increment(frame.samples.len() as u64);
        }
        InsertOutcome::Duplicate => metrics::counter!(m::FRAMES_DUPLICATE_TOTAL).increment(1),
        InsertOutcome::Conflict => {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "conflicting_duplicate")
                .increment(1);
        }
    }
}
