//! Building acknowledgements: committed keys compressed into ranges of consecutive sequence numbers, so that an
//! acknowledgement of a whole batch of one sensor is a single range.

use auscult_frame::{FrameKey, InvalidFrame};
use auscult_proto::ingest::v1 as pb;
use auscult_store::InsertOutcome;

/// The acknowledgement for one stream's share of a committed batch.
pub fn committed(mut outcomes: Vec<(FrameKey, InsertOutcome)>) -> pb::Ack {
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut ack = pb::Ack::default();
    for (key, outcome) in outcomes {
        match outcome {
            InsertOutcome::Conflict => ack.rejected.push(pb::Rejection {
                sensor_id: key.sensor_id,
                stream_epoch: wire(key.stream_epoch),
                seq: wire(key.seq),
                reason: pb::RejectReason::ConflictingDuplicate.into(),
                detail: "a different frame is already stored under this key; change stream_epoch after a \
                         sequence counter reset"
                    .into(),
            }),
            InsertOutcome::Stored | InsertOutcome::Duplicate => {
                if outcome == InsertOutcome::Duplicate {
                    ack.duplicates += 1;
                }
                extend_ranges(&mut ack.durable, &key);
            }
        }
    }
    ack
}

/// The acknowledgement rejecting one frame the database refused to store.
pub fn refused(key: FrameKey, error: &auscult_store::StoreError) -> pb::Ack {
    pb::Ack {
        rejected: vec![pb::Rejection {
            sensor_id: key.sensor_id,
            stream_epoch: wire(key.stream_epoch),
            seq: wire(key.seq),
            reason: pb::RejectReason::StorageRefused.into(),
            detail: format!("the database refused this frame: {error}"),
        }],
        ..pb::Ack::default()
    }
}

/// The acknowledgement rejecting one invalid frame, identified by its fields as received.
pub fn rejected(sensor_id: String, stream_epoch: u64, seq: u64, error: &InvalidFrame) -> pb::Ack {
    pb::Ack {
        rejected: vec![pb::Rejection {
            sensor_id,
            stream_epoch,
            seq,
            reason: auscult_proto::reject_reason(error).into(),
            detail: error.to_string(),
        }],
        ..Default::default()
    }
}

/// Appends `key` to the last range when it continues it, else starts a new range. Keys arrive sorted, and a
/// duplicate key inside one batch is absorbed by the range that already covers it.
fn extend_ranges(ranges: &mut Vec<pb::FrameRange>, key: &FrameKey) {
    let seq = wire(key.seq);
    let epoch = wire(key.stream_epoch);
    if let Some(last) = ranges.last_mut()
        && last.sensor_id == key.sensor_id
        && last.stream_epoch == epoch
        && seq <= last.last_seq + 1
    {
        last.last_seq = last.last_seq.max(seq);
        return;
    }
    ranges.push(pb::FrameRange {
        sensor_id: key.sensor_id.clone(),
        stream_epoch: epoch,
        first_seq: seq,
        last_seq: seq,
    });
}

/// Validated keys are never negative.
fn wire(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sensor: &str, epoch: i64, seq: i64) -> FrameKey {
        FrameKey {
            device_id: "d".into(),
            sensor_id: sensor.into(),
            stream_epoch: epoch,
            seq,
        }
    }

    #[test]
    fn consecutive_frames_collapse_into_ranges() {
        let outcomes = vec![
            (key("b", 1, 5), InsertOutcome::Stored),
            (key("a", 1, 2), InsertOutcome::Stored),
            (key("a", 1, 1), InsertOutcome::Duplicate),
            (key("a", 1, 3), InsertOutcome::Stored),
            (key("a", 1, 7), InsertOutcome::Stored),
            (key("a", 2, 8), InsertOutcome::Stored),
            (key("a", 1, 4), InsertOutcome::Conflict),
        ];
        let ack = committed(outcomes);
        let ranges: Vec<_> = ack
            .durable
            .iter()
            .map(|r| {
                (
                    r.sensor_id.as_str(),
                    r.stream_epoch,
                    r.first_seq,
                    r.last_seq,
                )
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("a", 1, 1, 3),
                ("a", 1, 7, 7),
                ("a", 2, 8, 8),
                ("b", 1, 5, 5)
            ]
        );
        assert_eq!(ack.duplicates, 1);
        assert_eq!(ack.rejected.len(), 1);
        assert_eq!(ack.rejected[0].seq, 4);
        assert_eq!(
            ack.rejected[0].reason,
            i32::from(pb::RejectReason::ConflictingDuplicate)
        );
    }
}
