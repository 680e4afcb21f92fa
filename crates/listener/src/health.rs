//! The pipeline watching itself: sensors that fall silent or change rate become health events, and
//! the work queue's depth becomes metrics, so a growing backlog shows before anyone asks.

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::settings::Settings;

/// Checks sensor health and queue depth every `health.check_interval` until `shutdown`.
pub async fn watch(settings: Settings, store: auscult_store::Pool, shutdown: CancellationToken) {
    let rule = settings.health_rule();
    loop {
        if let Err(e) = check(&rule, &store).await {
            warn!("checking pipeline health: {e}");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.health.check_interval) => {}
        }
    }
}

async fn check(
    rule: &auscult_store::HealthRule,
    store: &auscult_store::Pool,
) -> Result<(), auscult_store::StoreError> {
    let client = store.get().await?;
    for event in auscult_store::watch_sensors(&**client, rule).await? {
        metrics::counter!("auscult_health_events_total", "kind" => event.kind.clone()).increment(1);
        warn!(
            device = %event.device_id,
            sensor = %event.sensor_id,
            kind = %event.kind,
            "sensor health: {}",
            event.detail
        );
    }
    for state in ["ok", "silent", "rate_changed"] {
        metrics::gauge!("auscult_sensors", "state" => state).set(0.0);
    }
    for (state, count) in auscult_store::sensor_states(&**client).await? {
        metrics::gauge!("auscult_sensors", "state" => state).set(count as f64);
    }
    let depth = auscult_store::queue_depth(&**client).await?;
    for (state, value) in [
        ("ready", depth.ready),
        ("delayed", depth.delayed),
        ("running", depth.running),
        ("dead", depth.dead),
    ] {
        metrics::gauge!("auscult_jobs", "state" => state).set(value as f64);
    }
    Ok(())
}
