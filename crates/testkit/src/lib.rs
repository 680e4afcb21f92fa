//! Real servers on free ports, started and cleaned up by value: a throwaway PostgreSQL cluster from the
//! machine's server binaries, and auscult's own service binaries as child processes. Used by the end-to-end
//! tests, by `auscult bench` and by `auscult demo`, so that all of them run on a bare machine.

mod postgres;
mod process;
pub mod search;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::{future::Future, net::TcpListener, time::Duration};

pub use postgres::{PostgresServer, find_bin_dir as postgres_bin_dir};
pub use process::{ServiceProcess, workspace_binary};
pub use search::SearchServer;

/// What can go wrong starting a throwaway server.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error(
        "no PostgreSQL server binaries found (looked in {0}); install the `postgresql` package or set AUSCULT_PG_BIN"
    )]
    PostgresNotInstalled(String),
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "binary {name} not found at {path}: build the workspace first (`cargo build --release --workspace`)"
    )]
    BinaryMissing { name: String, path: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test is about to start.
///
/// Ports come from just below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 by
/// default): a port that `bind(0)` returns lies inside that range, and the kernel may give it to an
/// outgoing connection — a client's, PostgreSQL's — before the server binds it ("address already in
/// use"). Below the range only explicit binds compete. Each process walks the range from its own
/// start and never hands out a port twice, so concurrent tests in one process never collide; ports
/// something already listens on are skipped.
pub fn free_port() -> Result<u16, TestkitError> {
    static START: OnceLock<u32> = OnceLock::new();
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let ports = service_ports();
    let span = ports.end - ports.start;
    if span > 0 {
        let start = *START.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            (std::process::id().wrapping_mul(7919) ^ nanos) % span
        });
        for _ in 0..span {
            let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(ports.start + (start + n) % span) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Up to 12,000 ports ending where the kernel's ephemeral range starts.
fn service_ports() -> std::ops::Range<u32> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_536);
    ephemeral_start.saturating_sub(12_000).max(1_024)..ephemeral_start
}

/// Polls `condition` every 20 ms until it returns `Some` or `timeout` passes: how tests wait for something to
/// happen without sleeping a guessed amount.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut condition: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `timeout` until the standard gRPC health check at `endpoint` reports `service` SERVING
/// (`""`: the server as a whole). Connection failures count as not yet serving.
pub async fn wait_grpc_serving(
    endpoint: &tonic::transport::Endpoint,
    service: &str,
    timeout: Duration,
) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    wait_for(timeout, || async {
        let channel = endpoint.connect().await.ok()?;
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let response = HealthClient::new(channel).check(request).await.ok()?;
        (response.get_ref().status == ServingStatus::Serving as i32).then_some(())
    })
    .await
    .is_some()
}
