//! Real servers on free ports, started and cleaned up by value: a throwaway PostgreSQL cluster from the
//! machine's server binaries, and auscult's own service binaries as child processes. Used by the end-to-end
//! tests, by `auscult bench` and by `auscult demo`, so that all of them run on a bare machine.

mod postgres;
mod process;
mod search;

use std::{future::Future, net::TcpListener, time::Duration};

pub use postgres::PostgresServer;
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

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before it is used, so
/// starters retry with a new port when binding fails.
pub fn free_port() -> Result<u16, TestkitError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
