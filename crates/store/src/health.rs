//! Pipeline health: how often each sensor sends, learned as its frames are claimed, and the
//! sensors that fall silent or change rate.
//!
//! Each sensor keeps two running averages of the time between its frames: a slow one (its usual
//! rate) and a fast one (its recent rate). State changes are single conditional updates, so with
//! several listeners watching, each change produces exactly one event.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio_postgres::GenericClient;

use crate::StoreError;
use crate::jobs::ClaimedJob;

/// How fast the usual and recent intervals follow new frames (weight of one frame).
const USUAL_WEIGHT: f64 = 0.01;
const RECENT_WEIGHT: f64 = 0.2;

/// Records the frames of claimed jobs in their sensors' activity, inside the claim's transaction.
/// Sensors are updated in key order so that concurrent claims never deadlock.
pub(crate) async fn record_activity(
    tx: &tokio_postgres::Transaction<'_>,
    jobs: &[ClaimedJob],
) -> Result<(), StoreError> {
    let mut per_sensor: BTreeMap<(&str, &str), (SystemTime, SystemTime, i64)> = BTreeMap::new();
    for job in jobs {
        let entry = per_sensor
            .entry((&job.device_id, &job.sensor_id))
            .or_insert((job.captured_at, job.received_at, 0));
        entry.0 = entry.0.max(job.captured_at);
        entry.1 = entry.1.max(job.received_at);
        entry.2 += 1;
    }
    if per_sensor.is_empty() {
        return Ok(());
    }
    let devices: Vec<&str> = per_sensor.keys().map(|k| k.0).collect();
    let sensors: Vec<&str> = per_sensor.keys().map(|k| k.1).collect();
    let captured: Vec<SystemTime> = per_sensor.values().map(|v| v.0).collect();
    let received: Vec<SystemTime> = per_sensor.values().map(|v| v.1).collect();
    let counts: Vec<i64> = per_sensor.values().map(|v| v.2).collect();
    // The interval is the advance of the newest capture time over the frames that made it, so a
    // backlog claimed out of order does not read as a burst.
    tx.execute(
        "INSERT INTO sensor_health AS h (device_id, sensor_id, last_captured_at, last_received_at, frames)
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[])
         ON CONFLICT (device_id, sensor_id) DO UPDATE SET
            frames = h.frames + EXCLUDED.frames,
            last_captured_at = greatest(h.last_captured_at, EXCLUDED.last_captured_at),
            last_received_at = greatest(h.last_received_at, EXCLUDED.last_received_at),
            usual_interval_s = CASE WHEN EXCLUDED.last_captured_at <= h.last_captured_at THEN h.usual_interval_s
                WHEN h.usual_interval_s IS NULL THEN seconds_per_frame(EXCLUDED.last_captured_at, h.last_captured_at, EXCLUDED.frames)
                ELSE h.usual_interval_s + (1 - power(1 - $6::float8, EXCLUDED.frames))
                     * (seconds_per_frame(EXCLUDED.last_captured_at, h.last_captured_at, EXCLUDED.frames) - h.usual_interval_s)
                END,
            recent_interval_s = CASE WHEN EXCLUDED.last_captured_at <= h.last_captured_at THEN h.recent_interval_s
                WHEN h.recent_interval_s IS NULL THEN seconds_per_frame(EXCLUDED.last_captured_at, h.last_captured_at, EXCLUDED.frames)
                ELSE h.recent_interval_s + (1 - power(1 - $7::float8, EXCLUDED.frames))
                     * (seconds_per_frame(EXCLUDED.last_captured_at, h.last_captured_at, EXCLUDED.frames) - h.recent_interval_s)
                END",
        &[
            &devices,
            &sensors,
            &captured,
            &received,
            &counts,
            &USUAL_WEIGHT,
            &RECENT_WEIGHT,
        ],
    )
    .await?;
    Ok(())
}

/// When a sensor counts as silent or as sending at an unusual rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRule {
    /// Silent after this many usual intervals without a frame…
    pub silent_after_intervals: f64,
    /// …and never sooner than this.
    pub min_silence: Duration,
    /// A recent rate this many times faster or slower than usual is a departure.
    pub rate_ratio: f64,
    /// Frames a sensor must have sent before its rate is judged.
    pub min_frames: i64,
}

impl Default for HealthRule {
    fn default() -> Self {
        Self {
            silent_after_intervals: 5.0,
            min_silence: Duration::from_secs(10),
            rate_ratio: 2.0,
            min_frames: 30,
        }
    }
}

/// A change in a sensor's health.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthEvent {
    pub device_id: String,
    pub sensor_id: String,
    /// `silent`, `rate_changed` or `recovered`.
    pub kind: String,
    pub detail: String,
}

/// Moves sensors between `ok`, `silent` and `rate_changed` by `rule`, recording one event per change.
/// A sensor whose newer frames are stored but not yet claimed (a backlog) is not called silent.
pub async fn watch_sensors(
    client: &impl GenericClient,
    rule: &HealthRule,
) -> Result<Vec<HealthEvent>, StoreError> {
    let rows = client
        .query(
            "WITH silence AS (
                SELECT device_id, sensor_id,
                       make_interval(secs => greatest($1::float8 * usual_interval_s, $2::float8)) AS limit_after
                FROM sensor_health
            ), went_silent AS (
                UPDATE sensor_health h SET state = 'silent', state_since = clock_timestamp()
                FROM silence s
                WHERE h.device_id = s.device_id AND h.sensor_id = s.sensor_id
                  AND h.state <> 'silent' AND h.usual_interval_s IS NOT NULL
                  AND clock_timestamp() - h.last_received_at > s.limit_after
                  AND NOT EXISTS (SELECT 1 FROM frames f WHERE f.device_id = h.device_id
                                  AND f.sensor_id = h.sensor_id AND f.captured_at > h.last_captured_at)
                RETURNING h.device_id, h.sensor_id, 'silent' AS kind,
                          format('no frame for %s s (usually one every %s s)',
                                 round(extract(epoch FROM clock_timestamp() - h.last_received_at)::numeric, 1),
                                 round(h.usual_interval_s::numeric, 2)) AS detail
            ), rate_changed AS (
                UPDATE sensor_health h SET state = 'rate_changed', state_since = clock_timestamp()
                WHERE h.state = 'ok' AND h.frames >= $4::int8 AND h.usual_interval_s > 0 AND h.recent_interval_s > 0
                  AND (h.recent_interval_s / h.usual_interval_s > $3::float8 OR h.usual_interval_s / h.recent_interval_s > $3)
                  AND clock_timestamp() - h.last_received_at <= make_interval(secs => greatest($1 * h.usual_interval_s, $2))
                RETURNING h.device_id, h.sensor_id, 'rate_changed' AS kind,
                          format('one frame every %s s, usually every %s s',
                                 round(h.recent_interval_s::numeric, 2), round(h.usual_interval_s::numeric, 2))
            ), recovered AS (
                UPDATE sensor_health h SET state = 'ok', state_since = clock_timestamp()
                WHERE (h.state = 'silent'
                       AND clock_timestamp() - h.last_received_at <= make_interval(secs => greatest($1 * h.usual_interval_s, $2)))
                   OR (h.state = 'rate_changed'
                       AND h.recent_interval_s / h.usual_interval_s <= $3 AND h.usual_interval_s / h.recent_interval_s <= $3
                       AND clock_timestamp() - h.last_received_at <= make_interval(secs => greatest($1 * h.usual_interval_s, $2)))
                RETURNING h.device_id, h.sensor_id, 'recovered' AS kind,
                          format('sending again, one frame every %s s', round(h.recent_interval_s::numeric, 2))
            ), changes AS (
                SELECT * FROM went_silent UNION ALL SELECT * FROM rate_changed UNION ALL SELECT * FROM recovered
            ), events AS (
                INSERT INTO health_events (device_id, sensor_id, kind, detail)
                SELECT device_id, sensor_id, kind, detail FROM changes
                RETURNING id, device_id, sensor_id, kind, detail
            ), outbox AS (
                INSERT INTO search_outbox (kind, ref_id) SELECT 'health', id FROM events
                WHERE (SELECT indexing FROM search_projection)
            )
            SELECT device_id, sensor_id, kind, detail FROM events ORDER BY id",
            &[
                &rule.silent_after_intervals,
                &rule.min_silence.as_secs_f64(),
                &rule.rate_ratio,
                &rule.min_frames,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(HealthEvent {
                device_id: r.try_get(0)?,
                sensor_id: r.try_get(1)?,
                kind: r.try_get(2)?,
                detail: r.try_get(3)?,
            })
        })
        .collect()
}

/// Sensors per health state.
pub async fn sensor_states(client: &impl GenericClient) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT state, count(*) FROM sensor_health GROUP BY state ORDER BY state",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
