//! `auscult-listener`: turns stored frames into verdicts, alerts and health events.

auscult_service::service_main!(
    auscult_listener,
    "auscult-listener",
    "Claims analysis jobs as frames are stored, scores them on the analysis replicas, stores the verdicts, raises alerts and watches sensor health."
);
