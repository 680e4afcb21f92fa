//! Alerts: judged from each sensor's latest verdicts when they are stored, announced to webhooks
//! through an outbox of deliveries.

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::StoreError;

/// The channel notified when a delivery is waiting (by a trigger on `alert_deliveries`).
pub const ALERTS_CHANNEL: &str = "auscult_alerts";

/// When an alert opens and when it clears: it fires when at least `fire_at` of a sensor's last
/// `window` clip verdicts are anomalous, and resolves when at most `clear_at` of them are. Verdicts
/// on a lone second (the first seconds of a stream) are stored but do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRule {
    pub fire_at: i64,
    pub window: i64,
    pub clear_at: i64,
}

impl Default for AlertRule {
    fn default() -> Self {
        Self {
            fire_at: 3,
            window: 5,
            clear_at: 0,
        }
    }
}

/// The share of healthy clips that thresholds set for 1 % were measured to flag on recordings they
/// never heard: onboarded valves and sliders, averaged over ten draws of the enrolled clips
/// (`auscult evaluate --protocol onboarding --enroll-draws 10`, the README's figures). Healthy
/// machines make rare loud transients that a range fitted on a few dozen clips cannot cover, so a
/// pager should be planned for this rate rather than the target. It lives beside [`AlertRule`]
/// because it is what turns a rule into pages.
pub const MEASURED_FALSE_ALARM_RATE: f64 = 0.05;

impl AlertRule {
    /// The rule the Helm chart and docker compose run (`listener.alerts`, `ALERT_FIRE_AT` /
    /// `ALERT_WINDOW`): about one false alert per healthy sensor a week at the measured rate, a
    /// continuous fault heard after 40 s.
    pub const DEPLOYED: AlertRule = AlertRule {
        fire_at: 40,
        window: 60,
        clear_at: 0,
    };

    /// [`Self::expected_false_alerts_per_day`] for a live stream as the services judge it: a
    /// verdict for every one-second frame, each on the last ten seconds (the frame and
    /// `jobs.history_frames`, nine, before it).
    pub fn live_false_alerts_per_day(&self, false_alarm_rate: f64) -> f64 {
        self.expected_false_alerts_per_day(false_alarm_rate, 10.0, 1.0)
    }

    /// How many false alerts a healthy sensor raises per day under this rule, when each clip
    /// verdict is a false alarm with probability `false_alarm_rate` (the threshold's target) and a
    /// verdict arrives every `verdict_seconds`, each judging the last `clip_seconds` of sound.
    ///
    /// Verdicts less than a clip apart judge mostly the same sound, so they are not independent:
    /// the day is taken as independent clip-long blocks, each flagged with `false_alarm_rate`, all
    /// of a flagged block's verdicts anomalous. The rule then fires in a window of blocks when
    /// enough of them are flagged to make `fire_at` verdicts. A rule whose window fits within one
    /// clip therefore turns every false clip into an alert.
    pub fn expected_false_alerts_per_day(
        &self,
        false_alarm_rate: f64,
        clip_seconds: f64,
        verdict_seconds: f64,
    ) -> f64 {
        let per_block = (clip_seconds / verdict_seconds).round().max(1.0);
        let blocks_in_window = (self.window as f64 / per_block).ceil().max(1.0);
        let blocks_to_fire = (self.fire_at as f64 / per_block).ceil().max(1.0);
        let p = false_alarm_rate.clamp(0.0, 1.0);
        let n = blocks_in_window as u64;
        let fire = (blocks_to_fire as u64..=n)
            .map(|k| binomial(n, k) * p.powi(k as i32) * (1.0 - p).powi((n - k) as i32))
            .sum::<f64>();
        let windows_per_day = 86_400.0 / (blocks_in_window * clip_seconds);
        windows_per_day * fire
    }
}

fn binomial(n: u64, k: u64) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Fired or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    Fired,
    Resolved,
}

impl AlertEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::Resolved => "resolved",
        }
    }
}

/// An alert that opened or closed.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub alert_id: i64,
    pub event: AlertEvent,
    pub device_id: String,
    pub sensor_id: String,
    pub machine: String,
}

/// Judges the alerts of `sensors` (sorted) from their latest verdicts, inside the caller's
/// transaction. Each sensor is locked for the judgement, so listeners completing frames of the same
/// sensor judge one after the other and an alert opens once.
pub(crate) async fn judge_alerts(
    tx: &tokio_postgres::Transaction<'_>,
    sensors: &[(&str, &str)],
    rule: &AlertRule,
    webhooks: &[String],
) -> Result<Vec<AlertChange>, StoreError> {
    let mut changes = Vec::new();
    for &(device_id, sensor_id) in sensors {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))",
            &[&device_id, &sensor_id],
        )
        .await?;
        let latest = tx
            .query(
                "SELECT frame_id, anomalous, anomaly_score, threshold, model_version, top_bands::text, profile
                 FROM analysis_results WHERE device_id = $1 AND sensor_id = $2 AND clip
                 ORDER BY captured_at DESC, scored_at DESC LIMIT $3",
                &[&device_id, &sensor_id, &rule.window],
            )
            .await?;
        let Some(newest) = latest.first() else {
            continue;
        };
        let anomalous = latest
            .iter()
            .filter(|r| r.try_get::<_, bool>(1).unwrap_or(false))
            .count() as i64;
        let firing: Option<i64> = tx
            .query_opt(
                "SELECT id FROM alerts WHERE device_id = $1 AND sensor_id = $2 AND state = 'firing'",
                &[&device_id, &sensor_id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let newest_frame: i64 = newest.try_get(0)?;
        let machine: String = newest.try_get(6)?;
        // The loudest verdict of the window speaks for the alert.
        let loudest = latest
            .iter()
            .max_by(|a, b| {
                let ratio = |r: &tokio_postgres::Row| {
                    r.try_get::<_, f64>(2).unwrap_or(0.0) / r.try_get::<_, f64>(3).unwrap_or(1.0)
                };
                ratio(a).total_cmp(&ratio(b))
            })
            .unwrap_or(newest);
        let (score, threshold): (f64, f64) = (loudest.try_get(2)?, loudest.try_get(3)?);
        let (version, bands): (String, String) = (loudest.try_get(4)?, loudest.try_get(5)?);
        let window = latest.len() as i64;
        match firing {
            None if anomalous >= rule.fire_at => {
                let first_frame = latest
                    .iter()
                    .rev()
                    .find(|r| r.try_get::<_, bool>(1).unwrap_or(false))
                    .map_or(Ok(newest_frame), |r| r.try_get(0))?;
                let row = tx
                    .query_one(
                        "WITH opened AS (
                            INSERT INTO alerts (device_id, sensor_id, machine, state, first_frame_id,
                                                last_frame_id, anomalous_windows, window_count, peak_score,
                                                threshold, model_version, top_bands)
                            VALUES ($1, $2, $3, 'firing', $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb)
                            RETURNING id
                        ), outbox AS (
                            INSERT INTO search_outbox (kind, ref_id) SELECT 'alert', id FROM opened
                            WHERE (SELECT indexing FROM search_projection)
                        ), deliveries AS (
                            INSERT INTO alert_deliveries (alert_id, event, webhook)
                            SELECT id, 'fired', unnest($12::text[]) FROM opened
                        )
                        SELECT id FROM opened",
                        &[
                            &device_id,
                            &sensor_id,
                            &machine,
                            &first_frame,
                            &newest_frame,
                            &(anomalous as i32),
                            &(window as i32),
                            &score,
                            &threshold,
                            &version,
                            &bands,
                            &webhooks,
                        ],
                    )
                    .await?;
                changes.push(AlertChange {
                    alert_id: row.try_get(0)?,
                    event: AlertEvent::Fired,
                    device_id: device_id.into(),
                    sensor_id: sensor_id.into(),
                    machine,
                });
            }
            Some(id) if anomalous <= rule.clear_at => {
                tx.execute(
                    "WITH resolved AS (
                        UPDATE alerts SET state = 'resolved', resolved_at = clock_timestamp(), last_frame_id = $2,
                                          revision = revision + 1
                        WHERE id = $1 RETURNING id
                    ), outbox AS (
                        INSERT INTO search_outbox (kind, ref_id) SELECT 'alert', id FROM resolved
                        WHERE (SELECT indexing FROM search_projection)
                    )
                    INSERT INTO alert_deliveries (alert_id, event, webhook)
                    SELECT id, 'resolved', unnest($3::text[]) FROM resolved",
                    &[&id, &newest_frame, &webhooks],
                )
                .await?;
                changes.push(AlertChange {
                    alert_id: id,
                    event: AlertEvent::Resolved,
                    device_id: device_id.into(),
                    sensor_id: sensor_id.into(),
                    machine,
                });
            }
            // Still firing: the same episode, no new announcement.
            Some(id) => {
                // Its search document follows (one queued row per alert is enough: the document is read
                // as the alert stands when it is sent).
                tx.execute(
                    "WITH changed AS (
                        UPDATE alerts SET last_frame_id = greatest(last_frame_id, $2),
                               anomalous_windows = greatest(anomalous_windows, $3),
                               peak_score = greatest(peak_score, $4),
                               revision = revision + 1
                        WHERE id = $1
                          AND (last_frame_id < $2 OR anomalous_windows < $3 OR peak_score < $4)
                        RETURNING id
                    )
                    INSERT INTO search_outbox (kind, ref_id) SELECT 'alert', id FROM changed
                    WHERE (SELECT indexing FROM search_projection)
                      AND NOT EXISTS (SELECT 1 FROM search_outbox
                                      WHERE kind = 'alert' AND ref_id = $1 AND claim IS NULL)",
                    &[&id, &newest_frame, &(anomalous as i32), &score],
                )
                .await?;
            }
            None => {}
        }
    }
    Ok(changes)
}

/// A webhook delivery claimed for sending, with the JSON body to POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    pub attempts: i32,
    /// The event, with `idempotency_key` for receivers to de-duplicate on.
    pub body: serde_json::Value,
}

/// Claims up to `limit` deliveries that are due, hiding them from other senders for `lease`.
pub async fn claim_deliveries(
    client: &mut tokio_postgres::Client,
    limit: i64,
    lease: Duration,
    max_attempts: i32,
) -> Result<Vec<Delivery>, StoreError> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "WITH due AS (
                SELECT id FROM alert_deliveries
                WHERE delivered_at IS NULL AND next_attempt_at <= now() AND attempts < $3
                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE alert_deliveries d SET attempts = d.attempts + 1,
                       next_attempt_at = now() + make_interval(secs => $2)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.alert_id, d.event, d.webhook, d.attempts
            )
            SELECT c.id, c.webhook, c.attempts, jsonb_build_object(
                'idempotency_key', format('auscult-alert-%s-%s', a.id, c.event),
                'event', c.event,
                'alert_id', a.id,
                'state', a.state,
                'device_id', a.device_id,
                'sensor_id', a.sensor_id,
                'machine', a.machine,
                'opened_at', a.opened_at,
                'resolved_at', a.resolved_at,
                'first_frame_id', a.first_frame_id,
                'last_frame_id', a.last_frame_id,
                'anomalous_windows', a.anomalous_windows,
                'window_count', a.window_count,
                'peak_score', a.peak_score,
                'threshold', a.threshold,
                'model_version', a.model_version,
                'top_bands', a.top_bands)::text
            FROM claimed c JOIN alerts a ON a.id = c.alert_id ORDER BY c.id",
            &[&limit, &lease.as_secs_f64(), &max_attempts],
        )
        .await?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let body: String = row.try_get(3)?;
        deliveries.push(Delivery {
            id: row.try_get(0)?,
            webhook: row.try_get(1)?,
            attempts: row.try_get(2)?,
            body: serde_json::from_str(&body).map_err(|e| StoreError::Encode(e.to_string()))?,
        });
    }
    tx.commit().await?;
    Ok(deliveries)
}

/// Records a delivery's outcome: delivered, or retried after `retry_in` with the error kept.
pub async fn settle_delivery(
    client: &impl GenericClient,
    id: i64,
    outcome: Result<(), &str>,
    retry_in: Duration,
) -> Result<(), StoreError> {
    match outcome {
        Ok(()) => {
            client
                .execute(
                    "UPDATE alert_deliveries SET delivered_at = clock_timestamp(), last_error = NULL WHERE id = $1",
                    &[&id],
                )
                .await?
        }
        Err(error) => {
            client
                .execute(
                    "UPDATE alert_deliveries SET last_error = $2,
                            next_attempt_at = now() + make_interval(secs => $3)
                     WHERE id = $1",
                    &[&id, &error, &retry_in.as_secs_f64()],
                )
                .await?
        }
    };
    Ok(())
}

/// One alert as operators list them.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub device_id: String,
    pub sensor_id: String,
    pub machine: String,
    pub state: String,
    pub peak_score: f64,
    pub threshold: f64,
}

/// Every alert, oldest first.
pub async fn list_alerts(client: &impl GenericClient) -> Result<Vec<AlertRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT id, device_id, sensor_id, machine, state, peak_score, threshold FROM alerts ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AlertRecord {
                id: r.try_get(0)?,
                device_id: r.try_get(1)?,
                sensor_id: r.try_get(2)?,
                machine: r.try_get(3)?,
                state: r.try_get(4)?,
                peak_score: r.try_get(5)?,
                threshold: r.try_get(6)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_alerts_per_day_follow_the_rule_and_the_threshold() {
        let per_day = |fire_at, window, rate| {
            AlertRule {
                fire_at,
                window,
                clear_at: 0,
            }
            .expected_false_alerts_per_day(rate, 10.0, 1.0)
        };
        // Three of the last five one-second verdicts lie within one ten-second clip: every false
        // clip becomes an alert, 8,640 clips a day.
        assert!((per_day(3, 5, 0.01) - 86.4).abs() < 1e-9);
        // Thirty of sixty need three of six independent clips flagged.
        let strict = per_day(30, 60, 0.01);
        let expected = 1_440.0
            * (20.0 * 1e-6 * 0.99_f64.powi(3)
                + 15.0 * 1e-8 * 0.99_f64.powi(2)
                + 6.0 * 1e-10 * 0.99
                + 1e-12);
        assert!((strict - expected).abs() < 1e-9, "{strict} vs {expected}");
        assert!(
            per_day(30, 60, 0.001) < strict / 100.0,
            "a lower rate, far fewer alerts"
        );
        assert_eq!(per_day(30, 60, 0.0), 0.0);
    }

    #[test]
    fn at_the_measured_rate_the_deployed_rule_pages_weekly_and_the_demo_rule_constantly() {
        let per_day = |rule: AlertRule| rule.live_false_alerts_per_day(MEASURED_FALSE_ALARM_RATE);
        let plant = per_day(AlertRule::DEPLOYED);
        // Four of six independent clips flagged, 1,440 windows a day.
        let p = MEASURED_FALSE_ALARM_RATE;
        let expected = 1_440.0
            * (15.0 * p.powi(4) * (1.0 - p).powi(2) + 6.0 * p.powi(5) * (1.0 - p) + p.powi(6));
        assert!((plant - expected).abs() < 1e-12, "{plant} vs {expected}");
        assert!(plant < 1.0 / 7.0 * 1.5, "about one a week: {plant}");
        assert!(
            per_day(AlertRule::default()) > 400.0,
            "every false clip pages"
        );
    }
}
