//! The notification connection: one dedicated PostgreSQL connection that LISTENs for new frames and
//! alert deliveries and turns them into wake-ups. Notifications carry no work; they only cut the
//! wait before the next sweep of the tables.
//!
//! The connection is re-established whenever it drops, with backoff. After every (re)connect it
//! wakes every worker, so whatever was notified while it was away is swept at once. A standby
//! cannot LISTEN: a connection that lands on one is dropped and retried, so after a failover the
//! listener ends up on the new primary (list every host in the URL with
//! `target_session_attrs=read-write`).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use auscult_telemetry::Readiness;

/// Counters bumped on every wake-up; waiters see a change.
#[derive(Debug, Clone)]
pub struct Wakeups {
    pub frames: watch::Sender<u64>,
    pub alerts: watch::Sender<u64>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self {
            frames: watch::Sender::new(0),
            alerts: watch::Sender::new(0),
        }
    }

    pub fn wake_all(&self) {
        self.frames.send_modify(|n| *n += 1);
        self.alerts.send_modify(|n| *n += 1);
    }
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a LISTEN connection open until `shutdown`, re-connecting as needed. `ready` is true while
/// it is connected.
pub async fn listen(
    url: String,
    backoff: Duration,
    wakeups: Wakeups,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let mut delay = backoff;
    loop {
        let session = tokio::select! {
            () = shutdown.cancelled() => return,
            session = listen_once(&url, &wakeups, &ready, &shutdown) => session,
        };
        ready.set(false);
        match session {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("auscult_listener_reconnects_total").increment(1);
                warn!("notification connection lost: {e}; reconnecting in {delay:?}");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
        if delay < backoff {
            delay = backoff;
        }
    }
}

/// One connection's life: connect, refuse a standby, LISTEN, wake everyone, then forward
/// notifications until the connection ends. `Ok` only on shutdown.
async fn listen_once(
    url: &str,
    wakeups: &Wakeups,
    ready: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    // Bounded like every other session: a primary that vanishes is noticed within the TCP user timeout
    // and keepalives, and the loop reconnects to whichever host is the primary then.
    let config = auscult_store::session_config(
        url,
        "auscult-listener-notifications",
        &auscult_store::SessionLimits::default(),
    )
    .map_err(|e| e.to_string())?;
    let (client, mut connection) = config
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the client to work; notifications arrive through it.
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            let stop = message.is_err();
            if messages_tx.send(message).is_err() || stop {
                break;
            }
        }
    });
    let result = async {
        let standby: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| format!("checking for a standby: {e}"))?
            .try_get(0)
            .map_err(|e| e.to_string())?;
        if standby {
            return Err(
                "connected to a standby, which cannot LISTEN; looking for the primary".into(),
            );
        }
        client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                auscult_store::FRAMES_CHANNEL,
                auscult_store::ALERTS_CHANNEL
            ))
            .await
            .map_err(|e| format!("LISTEN: {e}"))?;
        info!("listening for notifications");
        ready.set(true);
        // Anything notified while we were away is in the tables: sweep now.
        wakeups.wake_all();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = messages.recv() => message,
            };
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    metrics::counter!("auscult_listener_notifications_total").increment(1);
                    if n.channel() == auscult_store::ALERTS_CHANNEL {
                        wakeups.alerts.send_modify(|c| *c += 1);
                    } else {
                        wakeups.frames.send_modify(|c| *c += 1);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection: {e}")),
                None => return Err("connection closed".into()),
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    result
}
