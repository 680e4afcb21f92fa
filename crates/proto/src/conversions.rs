//! Mapping between wire messages and domain types, in one place so that the rest of the code never sees a
//! generated type it does not need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auscult_frame::{InvalidFrame, RawFrame, SampleEncoding};

use crate::ingest::v1 as pb;

/// Takes a received frame apart into its raw fields, without judging them: judging is
/// [`RawFrame::validate`]'s job.
pub fn to_raw_frame(frame: pb::Frame) -> RawFrame {
    let encoding = match pb::SampleEncoding::try_from(frame.encoding) {
        Ok(pb::SampleEncoding::PcmS16le) => Ok(SampleEncoding::PcmS16le),
        Ok(pb::SampleEncoding::F32le) => Ok(SampleEncoding::F32le),
        Ok(pb::SampleEncoding::Unspecified) | Err(_) => Err(frame.encoding),
    };
    RawFrame {
        device_id: frame.device_id,
        sensor_id: frame.sensor_id,
        stream_epoch: frame.stream_epoch,
        seq: frame.seq,
        captured_at: frame.captured_at.and_then(timestamp_to_system_time),
        sample_rate_hz: frame.sample_rate_hz,
        channels: frame.channels,
        encoding,
        samples: frame.samples,
    }
}

/// The wire value of a domain encoding.
pub fn encoding_to_proto(encoding: SampleEncoding) -> pb::SampleEncoding {
    match encoding {
        SampleEncoding::PcmS16le => pb::SampleEncoding::PcmS16le,
        SampleEncoding::F32le => pb::SampleEncoding::F32le,
    }
}

/// The machine-readable reason for a validation failure.
pub fn reject_reason(error: &InvalidFrame) -> pb::RejectReason {
    use pb::RejectReason as R;
    match error {
        InvalidFrame::InvalidDeviceId(_) => R::InvalidDeviceId,
        InvalidFrame::InvalidSensorId(_) => R::InvalidSensorId,
        InvalidFrame::SequenceOutOfRange { .. } => R::SequenceOutOfRange,
        InvalidFrame::MissingCaptureTime => R::MissingCaptureTime,
        InvalidFrame::CaptureTimeInFuture { .. } => R::CaptureTimeInFuture,
        InvalidFrame::CaptureTimeTooOld { .. } => R::CaptureTimeTooOld,
        InvalidFrame::SampleRateOutOfRange(_) => R::SampleRateOutOfRange,
        InvalidFrame::ChannelsOutOfRange(_) => R::ChannelsOutOfRange,
        InvalidFrame::UnsupportedEncoding(_) => R::UnsupportedEncoding,
        InvalidFrame::PayloadLengthMismatch { .. } => R::PayloadLengthMismatch,
        InvalidFrame::NonFiniteSample { .. } => R::NonFiniteSample,
        InvalidFrame::SampleOutOfRange { .. } => R::SampleOutOfRange,
    }
}

/// Converts a protobuf timestamp; `None` for values outside what `SystemTime` and the proto spec allow.
pub fn timestamp_to_system_time(ts: prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    if ts.seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(u64::try_from(ts.seconds).ok()?, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.seconds.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// Converts a `SystemTime` to a protobuf timestamp.
pub fn system_time_to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let now = SystemTime::now();
        let back = timestamp_to_system_time(system_time_to_timestamp(now)).expect("representable");
        assert_eq!(back, now);
    }

    #[test]
    fn invalid_nanos_are_no_timestamp() {
        assert_eq!(
            timestamp_to_system_time(prost_types::Timestamp {
                seconds: 1,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            timestamp_to_system_time(prost_types::Timestamp {
                seconds: 1,
                nanos: 1_000_000_000
            }),
            None
        );
    }

    #[test]
    fn unknown_encoding_keeps_its_wire_value() {
        let raw = to_raw_frame(pb::Frame {
            encoding: 99,
            ..Default::default()
        });
        assert_eq!(raw.encoding, Err(99));
        let raw = to_raw_frame(pb::Frame {
            encoding: 0,
            ..Default::default()
        });
        assert_eq!(raw.encoding, Err(0));
    }
}
