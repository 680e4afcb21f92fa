//! `auscult-ingest`: receives frames from gateways over gRPC and stores them in PostgreSQL.

auscult_service::service_main!(
    auscult_ingest,
    "auscult-ingest",
    "Receives microphone frames from gateways and stores them durably, exactly once."
);
