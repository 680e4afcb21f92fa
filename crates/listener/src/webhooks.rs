//! Sends alert events to the configured webhooks from the delivery outbox: each event is POSTed
//! as JSON with an `Idempotency-Key` header (also in the body), retried with backoff until the
//! receiver answers 2xx or the attempts run out. Several listeners share the outbox safely.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::settings::AlertSettings;

/// Delivers due events until `shutdown`, waking on alert notifications or every few seconds.
pub async fn deliver(
    settings: AlertSettings,
    store: auscult_store::Pool,
    mut wakeups: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(settings.webhook_timeout)
        .user_agent(concat!("auscult/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            warn!("cannot build the webhook client: {e}; alerts are recorded but not sent");
            return;
        }
    };
    loop {
        wakeups.mark_unchanged();
        let sent = match deliver_due(&settings, &store, &http).await {
            Ok(sent) => sent,
            Err(e) => {
                warn!("delivering alerts: {e}");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = wakeups.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Sends one batch of due deliveries; returns how many were tried.
async fn deliver_due(
    settings: &AlertSettings,
    store: &auscult_store::Pool,
    http: &reqwest::Client,
) -> Result<usize, auscult_store::StoreError> {
    let mut client = store.get().await?;
    // The claim hides the deliveries from other senders for longer than a POST may take.
    let lease = settings.webhook_timeout * 2 + Duration::from_secs(5);
    let deliveries =
        auscult_store::claim_deliveries(&mut client, 16, lease, settings.max_delivery_attempts)
            .await?;
    for delivery in &deliveries {
        let key = delivery.body["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let outcome = http
            .post(&delivery.webhook)
            .header("Idempotency-Key", &key)
            .json(&delivery.body)
            .send()
            .await
            .map_err(|e| e.to_string())
            .and_then(|response| {
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            });
        let label = if outcome.is_ok() {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!("auscult_alert_deliveries_total", "outcome" => label).increment(1);
        match &outcome {
            Ok(()) => info!(webhook = %delivery.webhook, %key, "alert delivered"),
            Err(e) => warn!(
                webhook = %delivery.webhook, %key, attempt = delivery.attempts,
                "alert delivery failed: {e}"
            ),
        }
        // 1 s, 2 s, 4 s … at most 5 minutes between tries.
        let retry_in =
            Duration::from_secs(1 << delivery.attempts.clamp(0, 8)).min(Duration::from_secs(300));
        auscult_store::settle_delivery(
            &**client,
            delivery.id,
            outcome.as_ref().map(|_| ()).map_err(String::as_str),
            retry_in,
        )
        .await?;
    }
    Ok(deliveries.len())
}
