//! A gateway given every ingest address, when the replica it streams to freezes (SIGSTOP: the process
//! keeps its sockets open and answers nothing, as a hung host or a stalled database would look):
//! the stream is abandoned after the progress timeout, the gateway moves to the next replica and
//! resends, and every frame is stored exactly once.

use std::{process::Command, sync::atomic::Ordering, time::Duration};

use auscult_e2e::{Stack, spawn_ingest, wait_ingest_serving};
use auscult_gateway::{Gateway, GatewayConfig, Identity, SyntheticSource};
use auscult_testkit::{free_port, wait_for};

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_ingest_replica_is_left_for_the_next_one() {
    let stack = Stack::start(&[]).await;
    let token = stack.add_device("gw-failover").await;
    let second_port = free_port().expect("port");
    let second = spawn_ingest(
        &stack.postgres.url(),
        second_port,
        free_port().expect("port"),
        &[],
    );
    wait_ingest_serving(&second, second_port).await;
    let second_endpoint = format!("http://127.0.0.1:{second_port}");

    let mut config = GatewayConfig::new(stack.endpoint(), token);
    config.endpoints.push(second_endpoint);
    config.rate = Some(100.0);
    config.progress_timeout = Duration::from_secs(2);
    let identity = Identity {
        device_id: "gw-failover".into(),
        sensors: vec!["mic-0".into(), "mic-1".into()],
        stream_epoch: 1,
    };
    let gateway = Gateway::new(config);
    let progress = gateway.progress();
    let run =
        tokio::spawn(async move { gateway.run(SyntheticSource::new(identity, 200, 5)).await });

    // The first replica takes frames, then freezes mid-stream.
    let started = wait_for(Duration::from_secs(30), || {
        let acked = progress.acked.load(Ordering::Relaxed);
        async move { (acked >= 20).then_some(()) }
    })
    .await;
    assert!(started.is_some(), "the first ingest acknowledged nothing");
    let frozen = stack.ingest.pid();
    signal(frozen, "STOP");
    // Well inside HTTP/2 keepalive's detection of a dead peer (about 30 s): only the progress timeout
    // (2 s) gets the gateway to the next replica in time, with the rest of its 4 s of frames.
    let summary = tokio::time::timeout(Duration::from_secs(15), run).await;
    signal(frozen, "CONT");
    let summary = summary
        .expect("the gateway moved on within its deadline")
        .expect("join")
        .expect("every frame stored");

    assert_eq!(summary.acked, 400);
    assert!(summary.reconnects >= 1, "{summary:?}");
    let stored: i64 = stack
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM frames WHERE device_id = 'gw-failover'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 400);
}
