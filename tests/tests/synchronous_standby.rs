//! The PostgreSQL topology docker-compose.yml runs, as local processes: a primary that commits only once
//! its standby named `standby` has the WAL (`synchronous_standby_names = 'FIRST 1 (standby)'`), a hot
//! standby made with `pg_basebackup --write-recovery-conf`, and ingest given both hosts with
//! `target_session_attrs=read-write`. What it promises: ingest writes to the primary whichever host is
//! listed first, and never acknowledges a frame the standby does not have — while the standby is down,
//! acknowledgements wait, and they resume when it is back.

use std::{sync::atomic::Ordering, time::Duration};

use auscult_e2e::{
    auscult, connect, expect_logged, fetch_metrics, metric, spawn_ingest, start_postgres,
    succeeded, wait_for_count, wait_ingest_serving,
};
use auscult_gateway::{Gateway, GatewayConfig, Identity, SyntheticSource};
use auscult_testkit::{PostgresServer, free_port};

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn acknowledged_frames_are_on_the_synchronous_standby_and_wait_while_it_is_down() {
    let primary = start_postgres().await;
    let admin = connect(&primary.url()).await;
    // One statement per call: ALTER SYSTEM refuses to run inside the implicit transaction of a batch.
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby)'",
        "ALTER SYSTEM SET synchronous_commit = 'on'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.expect(statement);
    }
    // Before any standby exists, a commit would wait forever: migrate once it streams. (Blocks this
    // test's runtime for the copy; nothing else runs on it yet.)
    let standby = PostgresServer::start_standby(&primary, "standby").expect("standby");
    assert!(
        wait_for_count(
            &admin,
            "SELECT count(*) FROM pg_stat_replication
             WHERE application_name = 'standby' AND sync_state = 'sync'",
            Duration::from_secs(30),
            |n| n == 1,
        )
        .await,
        "the standby never became synchronous"
    );
    succeeded(&auscult(&primary.url(), &["migrate"]));
    let token = {
        let mut client = connect(&primary.url()).await;
        auscult_store::add_device(&mut client, "gw-sync", "test")
            .await
            .expect("device")
    };

    // The standby is listed first: ingest must find the writable host by itself.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port(),
        primary.port()
    );
    let (grpc_port, admin_port) = (free_port().expect("port"), free_port().expect("port"));
    // A COMMIT waiting for the lost standby is given up on (and its batch resent) after 1 s.
    let ingest = spawn_ingest(
        &url,
        grpc_port,
        admin_port,
        &[("AUSCULT__BATCH__COMMIT_TIMEOUT".into(), "1s".into())],
    );
    wait_ingest_serving(&ingest, grpc_port).await;
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    // Ingest sees that its acknowledgements wait for a synchronous standby.
    assert_eq!(
        metric(
            &fetch_metrics(admin_port),
            "auscult_ingest_acks_survive_primary_loss"
        ),
        Some(1.0)
    );
    let gateway = |epoch: u64| {
        let mut config = GatewayConfig::new(endpoint.clone(), token.clone());
        config.give_up_after = Duration::from_secs(120);
        let identity = Identity {
            device_id: "gw-sync".into(),
            sensors: vec!["mic-0".into(), "mic-1".into()],
            stream_epoch: epoch,
        };
        (Gateway::new(config), identity)
    };

    // Both up: every acknowledged frame is already on the standby's disk, and replays there.
    let (first, identity) = gateway(1);
    let summary = first
        .run(SyntheticSource::new(identity, 10, 1))
        .await
        .expect("stream with the standby up");
    assert_eq!(summary.acked, 20);
    let replica = connect(&standby.url()).await;
    assert!(
        wait_for_count(
            &replica,
            "SELECT count(*) FROM frames WHERE stream_epoch = 1",
            Duration::from_secs(30),
            |n| n == 20,
        )
        .await,
        "the standby does not hold the acknowledged frames"
    );
    drop(replica);

    // The standby's machine is lost: commits wait for it, so nothing new is acknowledged.
    standby.stop_immediately();
    let (second, identity) = gateway(2);
    let progress = second.progress();
    let run = tokio::spawn(async move { second.run(SyntheticSource::new(identity, 10, 2)).await });
    assert!(
        wait_for_count(
            &admin,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
            Duration::from_secs(30),
            |n| n > 0,
        )
        .await,
        "no commit waited for the standby:\n{}",
        ingest.log()
    );
    // The waiting COMMIT is given up on after batch.commit_timeout: the batch is reported failed (its
    // frames are resent), never acknowledged.
    expect_logged(
        &ingest,
        "the outcome is unknown",
        "no batch was given up on",
    )
    .await;
    assert_eq!(
        progress.acked.load(Ordering::Relaxed),
        0,
        "a frame was acknowledged while the synchronous standby was down"
    );

    // The standby is back: the waiting commits complete and every frame is acknowledged once.
    let _standby = tokio::task::spawn_blocking(move || {
        standby.restart().expect("restart the standby");
        standby
    })
    .await
    .expect("join");
    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("acknowledgements resumed")
        .expect("join")
        .expect("stream after the standby returned");
    assert_eq!(summary.acked, 20);
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM frames WHERE device_id = 'gw-sync'"
        )
        .await,
        40
    );
}

#[tokio::test]
async fn ingest_is_unready_on_a_standby_and_says_when_acknowledgements_are_not_replicated() {
    let primary = start_postgres().await;
    succeeded(&auscult(&primary.url(), &["migrate"]));
    // Asynchronous replication: the primary commits without waiting for anyone.
    let standby = PostgresServer::start_standby(&primary, "standby").expect("standby");
    let start_ingest = |url: String| {
        let admin_port = free_port().expect("port");
        let process = spawn_ingest(&url, free_port().expect("port"), admin_port, &[]);
        (process, admin_port)
    };

    // Given only the standby, ingest answers but never reports ready, and says why.
    let (on_standby, _) = start_ingest(standby.url());
    expect_logged(
        &on_standby,
        "the database is read-only",
        "ingest did not notice the standby",
    )
    .await;

    // On the primary it is ready, and warns that an acknowledged frame lives on one disk.
    let (on_primary, admin_port) = start_ingest(primary.url());
    expect_logged(
        &on_primary,
        "acknowledged frames do not survive the loss of the primary's disk",
        "no warning",
    )
    .await;
    assert_eq!(
        metric(
            &fetch_metrics(admin_port),
            "auscult_ingest_acks_survive_primary_loss"
        ),
        Some(0.0)
    );
}
