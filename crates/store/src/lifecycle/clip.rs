//! The audio an alert points at, from raw frames or from kept audio, for an engineer to listen to.

use std::time::{Duration, SystemTime};

use crate::{StoreError, StoredAudio, frames::stored_audio};

/// One frame of an alert's audio.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipFrame {
    pub captured_at: SystemTime,
    pub stream_epoch: i64,
    pub seq: i64,
    pub audio: StoredAudio,
}

/// An alert's audio: the frames of its sensor from `margin` before its first anomalous frame to `margin`
/// after its last (or to now, while it fires), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertAudio {
    pub device_id: String,
    pub sensor_id: String,
    pub from: SystemTime,
    pub to: SystemTime,
    pub frames: Vec<ClipFrame>,
    /// Frames in the window beyond `max_frames`, left out.
    pub truncated: bool,
}

/// Reads the audio of alert `alert_id` that is still stored, up to `max_frames` frames from the start of
/// its window. `Ok(None)` when there is no such alert.
pub async fn alert_audio(
    client: &impl tokio_postgres::GenericClient,
    alert_id: i64,
    margin: Duration,
    max_frames: i64,
) -> Result<Option<AlertAudio>, StoreError> {
    let margin = margin.as_secs_f64();
    let Some(alert) = client
        .query_opt(
            "SELECT a.device_id, a.sensor_id,
                    (SELECT min(captured_at) FROM analysis_results WHERE frame_id = a.first_frame_id)
                        - make_interval(secs => $2),
                    CASE WHEN a.state = 'firing' THEN now()
                         ELSE (SELECT max(captured_at) FROM analysis_results WHERE frame_id = a.last_frame_id)
                              + make_interval(secs => $2) END
             FROM alerts a WHERE a.id = $1",
            &[&alert_id, &margin],
        )
        .await?
    else {
        return Ok(None);
    };
    let device_id: String = alert.try_get(0)?;
    let sensor_id: String = alert.try_get(1)?;
    let (Some(from), Some(to)) = (
        alert.try_get::<_, Option<SystemTime>>(2)?,
        alert.try_get::<_, Option<SystemTime>>(3)?,
    ) else {
        // The alert's verdicts are gone (pruned with it or never written): no window to read.
        return Ok(Some(AlertAudio {
            device_id,
            sensor_id,
            from: SystemTime::UNIX_EPOCH,
            to: SystemTime::UNIX_EPOCH,
            frames: Vec::new(),
            truncated: false,
        }));
    };
    // A frame copied into frames_kept and not yet dropped from its partition is in both: read it once.
    let rows = client
        .query(
            "SELECT DISTINCT ON (captured_at, stream_epoch, seq)
                    captured_at, stream_epoch, seq, sample_rate_hz, channels, encoding, samples
             FROM (SELECT captured_at, stream_epoch, seq, sample_rate_hz, channels, encoding, samples
                   FROM frames WHERE device_id = $1 AND sensor_id = $2 AND captured_at BETWEEN $3 AND $4
                   UNION ALL
                   SELECT captured_at, stream_epoch, seq, sample_rate_hz, channels, encoding, samples
                   FROM frames_kept WHERE device_id = $1 AND sensor_id = $2 AND captured_at BETWEEN $3 AND $4) f
             ORDER BY captured_at, stream_epoch, seq
             LIMIT $5",
            &[&device_id, &sensor_id, &from, &to, &(max_frames + 1)],
        )
        .await?;
    let truncated = rows.len() as i64 > max_frames;
    let mut frames = Vec::with_capacity(rows.len());
    for row in rows.iter().take(usize::try_from(max_frames).unwrap_or(0)) {
        frames.push(ClipFrame {
            captured_at: row.try_get(0)?,
            stream_epoch: row.try_get(1)?,
            seq: row.try_get(2)?,
            audio: stored_audio(
                row.try_get(3)?,
                row.try_get(4)?,
                row.try_get(5)?,
                row.try_get(6)?,
            )?,
        });
    }
    Ok(Some(AlertAudio {
        device_id,
        sensor_id,
        from,
        to,
        frames,
        truncated,
    }))
}
