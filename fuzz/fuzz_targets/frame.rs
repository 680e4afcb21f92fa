//! A gateway's frame as it arrives: protobuf bytes, decoded, validated as ingest validates them. A frame
//! that passes is compressed for storage as ingest stores it, and what is stored must decode back to exactly
//! the samples received.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The server clock the frames are judged against (the seeds' capture times are near it).
const NOW_UNIX_S: u64 = 1_790_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = auscult_proto::ingest::v1::Frame::decode(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX_S);
    let limits = auscult_frame::Limits::default();
    let Ok(mut frame) = auscult_proto::to_raw_frame(frame).validate(&limits, now) else {
        return;
    };
    let _ = auscult_frame::decode_interleaved(frame.encoding, &frame.samples);
    if frame.compress_for_storage().is_ok()
        && let Some(flac) = &frame.flac
    {
        let decoded =
            auscult_frame::flac::decode_to_pcm_s16le(flac, frame.channels, frame.sample_rate_hz)
                .expect("a frame's own FLAC decodes");
        assert_eq!(
            decoded,
            frame.samples.as_ref(),
            "FLAC round trip changed the samples"
        );
    }
});
