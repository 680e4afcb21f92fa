//! Client-side load balancing over the analysis replicas: round robin over every address the
//! configured endpoints resolve to, a deadline on every call, and retries with jittered backoff on
//! another replica when a call fails for a reason retrying can fix. A replica that failed is left
//! out for a while (ejected) so that a dead one costs one failed call, not one per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use auscult_proto::analysis::v1::{ScoreRequest, ScoreResponse, analysis_client::AnalysisClient};
use rand::Rng;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::settings::AnalysisSettings;

/// Why a Score call failed after its retries.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no analysis replica resolved from {0:?}")]
    NoReplica(Vec<String>),
    #[error("analysis replicas failed {attempts} tries, last: {status}")]
    Exhausted {
        attempts: u32,
        status: tonic::Status,
    },
    #[error("analysis refused the request: {0}")]
    Refused(tonic::Status),
}

#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    client: AnalysisClient<Channel>,
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn available(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .map(|until| until.is_none_or(|t| t <= now))
            .unwrap_or(true)
    }

    fn eject(&self, period: Duration) {
        if let Ok(mut until) = self.ejected_until.lock() {
            *until = Some(Instant::now() + period);
        }
    }
}

/// The analysis replicas this listener calls.
#[derive(Debug, Clone)]
pub struct AnalysisReplicas {
    settings: AnalysisSettings,
    replicas: Arc<RwLock<Vec<Arc<Replica>>>>,
    next: Arc<AtomicUsize>,
}

impl AnalysisReplicas {
    /// Resolves the endpoints now; call [`Self::refresh`] periodically to follow scaling.
    pub async fn connect(settings: AnalysisSettings) -> Self {
        let replicas = Self {
            settings,
            replicas: Arc::new(RwLock::new(Vec::new())),
            next: Arc::new(AtomicUsize::new(0)),
        };
        replicas.refresh().await;
        replicas
    }

    /// Re-resolves the endpoints, keeping the connections of addresses that remain.
    pub async fn refresh(&self) {
        let mut resolved: Vec<(String, SocketAddr)> = Vec::new();
        for endpoint in &self.settings.endpoints {
            let Ok(uri) = endpoint.parse::<tonic::transport::Uri>() else {
                continue;
            };
            let Some(host) = uri.host() else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(50052);
            let scheme = uri.scheme_str().unwrap_or("http").to_owned();
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => resolved.extend(addrs.map(|a| (scheme.clone(), a))),
                Err(e) => warn!(endpoint, "cannot resolve analysis endpoint: {e}"),
            }
        }
        resolved.sort_by_key(|r| r.1);
        resolved.dedup_by_key(|r| r.1);
        let current: HashMap<SocketAddr, Arc<Replica>> = self
            .replicas
            .read()
            .map(|r| r.iter().map(|x| (x.addr, Arc::clone(x))).collect())
            .unwrap_or_default();
        let mut next = Vec::with_capacity(resolved.len());
        for (scheme, addr) in resolved {
            if let Some(existing) = current.get(&addr) {
                next.push(Arc::clone(existing));
                continue;
            }
            let Ok(endpoint) = Endpoint::from_shared(format!("{scheme}://{addr}")) else {
                continue;
            };
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .connect_lazy();
            next.push(Arc::new(Replica {
                addr,
                client: AnalysisClient::new(channel).max_decoding_message_size(16 << 20),
                ejected_until: Mutex::new(None),
            }));
        }
        metrics::gauge!("auscult_listener_analysis_replicas").set(next.len() as f64);
        if let Ok(mut replicas) = self.replicas.write() {
            *replicas = next;
        }
    }

    /// The next replica in turn that is not ejected; if all are, the one back soonest.
    fn pick(&self) -> Option<Arc<Replica>> {
        let replicas = self.replicas.read().ok()?;
        if replicas.is_empty() {
            return None;
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .find(|r| r.available(now))
            .or_else(|| {
                replicas
                    .iter()
                    .min_by_key(|r| r.ejected_until.lock().ok().and_then(|t| *t).unwrap_or(now))
            })
            .cloned()
    }

    /// Calls `Score` with a deadline, retrying on other replicas with backoff.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse, CallError> {
        let tries = self.settings.retries + 1;
        let mut last = tonic::Status::unavailable("not tried");
        for attempt in 0..tries {
            let Some(replica) = self.pick() else {
                return Err(CallError::NoReplica(self.settings.endpoints.clone()));
            };
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.settings.deadline);
            let mut client = replica.client.clone();
            let outcome = tokio::time::timeout(self.settings.deadline, client.score(call))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("deadline passed")));
            match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let code = status.code();
                    metrics::counter!("auscult_listener_analysis_failures_total",
                        "code" => format!("{code:?}"))
                    .increment(1);
                    match code {
                        // The replica is busy, not broken: back off, keep it.
                        tonic::Code::ResourceExhausted => {}
                        tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::Internal
                        | tonic::Code::Aborted
                        | tonic::Code::Cancelled => {
                            debug!(replica = %replica.addr, ?code, "ejecting analysis replica");
                            replica.eject(self.settings.eject_for);
                        }
                        _ => return Err(CallError::Refused(status)),
                    }
                    last = status;
                }
            }
            if attempt + 1 < tries {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        Err(CallError::Exhausted {
            attempts: tries,
            status: last,
        })
    }

    /// `backoff · 2^attempt`, at most 5 s, with ±50 % jitter so that listeners do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .settings
            .backoff
            .saturating_mul(1 << attempt.min(10))
            .min(Duration::from_secs(5));
        base.mul_f64(rand::rng().random_range(0.5..1.5))
    }
}
