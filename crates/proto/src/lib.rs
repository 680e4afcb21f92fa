//! The gRPC contract, generated from `proto/` at build time, and the conversions between its messages and the
//! domain types of the core crates. Nothing generated is committed.

mod conversions;

/// Version 1 of the gateway → ingest contract.
pub mod ingest {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
        tonic::include_proto!("auscult.ingest.v1");
    }
}

/// Version 1 of the listener → analysis contract.
pub mod analysis {
    pub mod v1 {
        #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
        tonic::include_proto!("auscult.analysis.v1");
    }

    /// The words `ScoreParts` may hold in its string fields. Analysis writes them and the
    /// listener stores only these, so what reaches PostgreSQL and Elasticsearch stays a closed set
    /// that charts can group by.
    pub mod score_parts {
        /// `ScoreParts.furthest`: the parts of a clip's score, in the order they are put together.
        pub const PART_NAMES: [&str; 4] =
            ["windows", "band_spectrum", "band_peaks", "impulsiveness"];
        /// `ScoreParts.impulsiveness_side`: which way the impulsiveness departs from normal.
        pub const SIDES: [&str; 2] = ["duller", "sharper"];
    }
}

/// Encoded `FileDescriptorSet` of every auscult proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("auscult_descriptor");

pub use conversions::{
    encoding_to_proto, reject_reason, system_time_to_timestamp, timestamp_to_system_time,
    to_raw_frame,
};
