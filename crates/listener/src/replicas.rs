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
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing::{debug, warn};

use crate::settings::AnalysisSettings;

/// A file the link to analysis needs could not be used.
#[derive(Debug, thiserror::Error)]
#[error("analysis.{key}: {problem}")]
pub struct LinkError {
    key: &'static str,
    problem: String,
}

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
    channel: Channel,
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
    /// CA and client identity for `https://` endpoints; the server name is set per endpoint.
    tls: ClientTlsConfig,
    /// `Bearer <secret>`, when analysis asks for a credential.
    credential: Option<MetadataValue<Ascii>>,
    replicas: Arc<RwLock<Vec<Arc<Replica>>>>,
    next: Arc<AtomicUsize>,
}

impl AnalysisReplicas {
    /// Resolves the endpoints now; call [`Self::refresh`] periodically to follow scaling. Fails only
    /// when a TLS or credential file cannot be used.
    pub async fn connect(settings: AnalysisSettings) -> Result<Self, LinkError> {
        let file_problem = |key| {
            move |e: auscult_settings::SecretFileError| LinkError {
                key,
                problem: e.to_string(),
            }
        };
        let read = |key, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| LinkError {
                key,
                problem: format!("reading {}: {e}", path.display()),
            })
        };
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &settings.ca_path {
            tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca_path", ca)?));
        }
        match (&settings.cert_path, &settings.key_path) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("cert_path", cert)?,
                    read("key_path", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(LinkError {
                    key: "cert_path",
                    problem: "a client certificate needs both cert_path and key_path".into(),
                });
            }
        }
        let credential = settings
            .credential_file
            .as_deref()
            .map(auscult_settings::read_credential)
            .transpose()
            .map_err(file_problem("credential_file"))?
            .map(|secret| {
                format!("Bearer {secret}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| LinkError {
                        key: "credential_file",
                        problem: "the credential is not a valid header value".into(),
                    })
            })
            .transpose()?;
        let replicas = Self {
            settings,
            tls,
            credential,
            replicas: Arc::new(RwLock::new(Vec::new())),
            next: Arc::new(AtomicUsize::new(0)),
        };
        replicas.refresh().await;
        Ok(replicas)
    }

    /// Re-resolves the endpoints, keeping the connections of addresses that remain.
    pub async fn refresh(&self) {
        // (scheme, host name, address): TLS verifies the name the endpoint was given, not the address.
        let mut resolved: Vec<(String, String, SocketAddr)> = Vec::new();
        for endpoint in &self.settings.endpoints {
            let Ok(uri) = endpoint.parse::<tonic::transport::Uri>() else {
                continue;
            };
            let Some(host) = uri.host() else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(50052);
            let scheme = uri.scheme_str().unwrap_or("http").to_owned();
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => {
                    resolved.extend(addrs.map(|a| (scheme.clone(), host.to_owned(), a)));
                }
                Err(e) => warn!(endpoint, "cannot resolve analysis endpoint: {e}"),
            }
        }
        resolved.sort_by_key(|r| r.2);
        resolved.dedup_by_key(|r| r.2);
        let current: HashMap<SocketAddr, Arc<Replica>> = self
            .replicas
            .read()
            .map(|r| r.iter().map(|x| (x.addr, Arc::clone(x))).collect())
            .unwrap_or_default();
        let mut next = Vec::with_capacity(resolved.len());
        for (scheme, host, addr) in resolved {
            if let Some(existing) = current.get(&addr) {
                next.push(Arc::clone(existing));
                continue;
            }
            let Ok(mut endpoint) = Endpoint::from_shared(format!("{scheme}://{addr}")) else {
                continue;
            };
            if scheme == "https" {
                match endpoint.tls_config(self.tls.clone().domain_name(host)) {
                    Ok(with_tls) => endpoint = with_tls,
                    Err(e) => {
                        warn!(%addr, "cannot set up TLS to an analysis replica: {e}");
                        continue;
                    }
                }
            }
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .connect_lazy();
            next.push(Arc::new(Replica {
                addr,
                client: AnalysisClient::new(channel.clone()).max_decoding_message_size(16 << 20),
                channel,
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
            if let Some(credential) = &self.credential {
                call.metadata_mut()
                    .insert("authorization", credential.clone());
            }
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

    /// Whether any replica answers its health check as serving, within a second. Tells an outage (none
    /// does: a network fault, every replica down) from a call that failed because of what it carried.
    pub async fn any_serving(&self) -> bool {
        let replicas: Vec<Arc<Replica>> = self
            .replicas
            .read()
            .map(|replicas| replicas.clone())
            .unwrap_or_default();
        for replica in replicas {
            let mut health = HealthClient::new(replica.channel.clone());
            let request = HealthCheckRequest {
                service: "auscult.analysis.v1.Analysis".into(),
            };
            let answer = tokio::time::timeout(Duration::from_secs(1), health.check(request)).await;
            if let Ok(Ok(response)) = answer
                && response.get_ref().status == ServingStatus::Serving as i32
            {
                return true;
            }
        }
        false
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
