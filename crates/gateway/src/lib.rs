//! The gateway's side of the ingest contract: where frames come from ([`source`]) and the client that streams
//! them to ingest, keeps every frame until it is acknowledged, and resends the rest after a reconnect
//! ([`client`]). Used by `auscult simulate`, `auscult bench ingest`, the demo and the end-to-end tests; a real
//! gateway's firmware would follow the same protocol.

pub mod client;
pub mod source;

pub use client::{Event, Gateway, GatewayConfig, GatewayError, Progress, Summary};
pub use source::{FrameSource, Identity, PreparedSource, SourceError, SyntheticSource, WavSource};
