//! Flow control: when the database stops committing, ingest holds no more than its memory budget and the
//! gateway is held back by the transport; when the database resumes, everything is stored exactly once.

use std::{sync::atomic::Ordering, time::Duration};

use auscult_e2e::{Stack, metric, stored_frames};
use auscult_gateway::{Gateway, GatewayConfig, Identity, SyntheticSource};
use auscult_testkit::wait_for;

/// The stream's budget: with one gateway stream, the tighter of the two.
const BUDGET: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_database_holds_gateways_back_within_the_memory_budget() {
    let stack = Stack::start(&[
        ("AUSCULT__FLOW__MAX_INFLIGHT_BYTES", "2097152"),
        ("AUSCULT__FLOW__MAX_STREAM_INFLIGHT_BYTES", "1048576"),
    ])
    .await;
    let token = stack.add_device("gw-p").await;

    // Hold a lock that every COPY into frames waits for: commits stop.
    let blocker = stack.db().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE frames IN EXCLUSIVE MODE")
        .await
        .expect("lock");

    let identity = Identity {
        device_id: "gw-p".into(),
        sensors: vec!["mic-0".into()],
        stream_epoch: 1,
    };
    let total = 2_000u64; // 64 MB of audio, far beyond every buffer on the way
    let mut config = GatewayConfig::new(stack.endpoint(), token);
    config.window = 100_000; // the gateway itself would never wait
    let gateway = Gateway::new(config);
    let progress = gateway.progress();
    let run =
        tokio::spawn(async move { gateway.run(SyntheticSource::new(identity, total, 3)).await });

    // Ingest fills its budget…
    let full = wait_for(Duration::from_secs(20), || {
        let text = stack.metrics();
        async move {
            metric(&text, "auscult_ingest_inflight_bytes")
                .filter(|b| *b >= (BUDGET - 32_000) as f64)
        }
    })
    .await;
    assert!(
        full.is_some(),
        "ingest never filled its budget:\n{}",
        stack.metrics()
    );
    // …and never exceeds it, while the gateway cannot push its frames through.
    let stalled = wait_for(Duration::from_secs(3), || {
        let (text, sent) = (stack.metrics(), progress.sent.load(Ordering::Relaxed));
        async move {
            let inflight = metric(&text, "auscult_ingest_inflight_bytes").unwrap_or_default();
            assert!(
                inflight <= BUDGET as f64,
                "in-flight bytes {inflight} exceed the budget {BUDGET}"
            );
            (sent >= total).then_some(())
        }
    })
    .await;
    assert!(
        stalled.is_none(),
        "the gateway sent all {total} frames although nothing could be committed"
    );
    assert_eq!(progress.acked.load(Ordering::Relaxed), 0);

    // The database resumes: everything drains, exactly once.
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    let summary = run.await.expect("join").expect("gateway run");
    assert_eq!(summary.acked, total);
    assert_eq!(stored_frames(&stack.db().await, "gw-p").await.len(), 2_000);
}
