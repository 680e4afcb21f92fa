//! `auscult health`: one standard gRPC health check against a service, for container health checks,
//! `helm test` and scripts. The images carry no shell or curl, so the probe is part of the CLI.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service's gRPC address, e.g. http://ingest:50051 (https:// for TLS).
    address: String,
    /// The health service to ask about, e.g. auscult.ingest.v1.Ingest; empty asks whether the server
    /// runs at all.
    #[arg(long, default_value = "")]
    service: String,
    /// How long connecting and answering may take together.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// CA certificate (PEM) to verify the service's TLS certificate.
    #[arg(long, env = "AUSCULT_HEALTH_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// Prints the status; fails unless it is SERVING.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let status = tokio::time::timeout(args.timeout, check(&args))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{}: no health answer within {}",
                args.address,
                humantime::format_duration(args.timeout)
            )
        })??;
    let name = status.as_str_name();
    let service = if args.service.is_empty() {
        "server"
    } else {
        &args.service
    };
    if status == ServingStatus::Serving {
        println!("{}: {service} is {name}", args.address);
        Ok(())
    } else {
        anyhow::bail!("{}: {service} is {name}", args.address)
    }
}

async fn check(args: &Args) -> anyhow::Result<ServingStatus> {
    let mut endpoint = Endpoint::from_shared(args.address.clone())
        .with_context(|| format!("{:?} is not a gRPC address", args.address))?
        .connect_timeout(args.timeout);
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("configuring TLS")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.address))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{}: health check failed: {} ({:?})",
                args.address,
                status.message(),
                status.code()
            )
        })?;
    Ok(ServingStatus::try_from(response.get_ref().status).unwrap_or(ServingStatus::Unknown))
}
