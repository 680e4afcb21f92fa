//! The gRPC face of ingest: authentication of each stream and the `Ingest` service. The only module that
//! knows `tonic::Status`, together with `stream`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use auscult_frame::Limits;
use auscult_proto::ingest::v1::{self as pb, ingest_server::Ingest};
use auscult_store::Pool;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::{Instrument, info_span, warn};

use crate::{
    devices::{Devices, TokenDigest},
    identity, metrics as m,
    stream::{StreamContext, run_stream},
    writer::Submitter,
};

/// Acknowledgements buffered per stream before the stream waits for the gateway to read them.
const ACK_BUFFER: usize = 32;

/// The `Ingest` gRPC service.
#[derive(Debug)]
pub struct IngestService {
    /// Connections for authentication only, apart from the writers'.
    pub(crate) auth_pool: Pool,
    /// How long a new stream waits for an authentication connection.
    pub(crate) auth_wait: Duration,
    pub(crate) devices: Arc<Devices>,
    pub(crate) limits: Limits,
    pub(crate) clock_offset_warning: std::time::Duration,
    pub(crate) compress: bool,
    pub(crate) submit: Submitter,
    pub(crate) service_budget: Arc<Semaphore>,
    pub(crate) stream_budget_bytes: usize,
    pub(crate) streams: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) next_stream_id: AtomicU64,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamFramesStream = ReceiverStream<Result<pb::Ack, Status>>;

    async fn stream_frames(
        &self,
        request: Request<Streaming<pb::Frame>>,
    ) -> Result<Response<Self::StreamFramesStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable(
                "ingest is shutting down: connect to another replica",
            ));
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (device_id, token) = self.authenticate(request.metadata()).await?;
        let certificates = request.peer_certs();
        if let Err(problem) = identity::check(
            certificates
                .as_ref()
                .and_then(|c| c.first())
                .map(AsRef::as_ref),
            &device_id,
        ) {
            metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => problem.reason()).increment(1);
            warn!(device = %device_id, %peer, "{problem}");
            return Err(Status::permission_denied(problem.to_string()));
        }
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .devices
            .open(&device_id, stream_id, token)
            .map_err(|refused| {
                metrics::counter!(m::STREAMS_REFUSED_TOTAL, "reason" => "device_streams")
                    .increment(1);
                warn!(device = %device_id, "{refused}");
                Status::resource_exhausted(format!("{refused}: close one, or reuse an open stream"))
            })?;
        let ctx = StreamContext {
            stream_id,
            device_id: device_id.clone(),
            slot,
            limits: self.limits,
            clock_offset_warning: self.clock_offset_warning,
            compress: self.compress,
            submit: self.submit.clone(),
            service_budget: Arc::clone(&self.service_budget),
            stream_budget: Arc::new(Semaphore::new(self.stream_budget_bytes)),
            shutdown: self.shutdown.clone(),
        };
        let (out, acks) = mpsc::channel(ACK_BUFFER);
        let inbound = request.into_inner();
        let span = info_span!("stream", device = %device_id, stream_id, %peer);
        self.streams.spawn(
            async move {
                metrics::gauge!(m::STREAMS_ACTIVE).increment(1);
                run_stream(ctx, inbound, out).await;
                metrics::gauge!(m::STREAMS_ACTIVE).decrement(1);
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(acks)))
    }
}

impl IngestService {
    /// The device whose bearer token the stream presents, and the token's digest.
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<(String, TokenDigest), Status> {
        let refuse = |reason: &'static str, message: &'static str| {
            metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
            Status::unauthenticated(message)
        };
        let header = metadata.get("authorization").ok_or_else(|| {
            refuse(
                "missing_token",
                "missing `authorization: Bearer <token>` metadata",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| {
                refuse(
                    "malformed_token",
                    "authorization metadata must be `Bearer <token>`",
                )
            })?;
        let client = match tokio::time::timeout(self.auth_wait, self.auth_pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                warn!("cannot authenticate, no database connection: {e}");
                return Err(Status::unavailable(
                    "cannot authenticate right now: database unavailable",
                ));
            }
            Err(_) => {
                metrics::counter!(m::STREAMS_REFUSED_TOTAL, "reason" => "auth_busy").increment(1);
                return Err(Status::unavailable(
                    "cannot authenticate right now: too many streams opening at once; retry shortly",
                ));
            }
        };
        match auscult_store::authenticate(&**client, token).await {
            Ok(Some(device)) => Ok((device, auscult_store::token_digest(token))),
            Ok(None) => Err(refuse("unknown_token", "unknown or revoked token")),
            Err(e) => {
                warn!("cannot authenticate: {e}");
                Err(Status::unavailable(
                    "cannot authenticate right now: database unavailable",
                ))
            }
        }
    }
}
