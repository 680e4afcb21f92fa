//! `auscult-analysis`: scores frames with the active model over gRPC.

auscult_service::service_main!(
    auscult_analysis,
    "auscult-analysis",
    "Scores machine sound with the active model: stored frames by id, or audio inline."
);
