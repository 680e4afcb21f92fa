//! The store against a real, throwaway PostgreSQL.

mod common;

use common::{connect, migrated};

use std::time::{Duration, SystemTime};

use auscult_frame::{Frame, Limits, RawFrame, SampleEncoding, encode_pcm_s16le};
use auscult_store::{InsertOutcome, StoreError};
use auscult_testkit::PostgresServer;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

fn frame(device: &str, sensor: &str, seq: u64, level: f32) -> Frame {
    let now = SystemTime::now();
    RawFrame {
        device_id: device.into(),
        sensor_id: sensor.into(),
        stream_epoch: 1,
        seq,
        captured_at: Some(now),
        sample_rate_hz: 16_000,
        channels: 1,
        encoding: Ok(SampleEncoding::PcmS16le),
        samples: Bytes::from(encode_pcm_s16le(&vec![level; 160])),
    }
    .validate(&Limits::default(), now)
    .expect("valid frame")
}

#[tokio::test]
async fn migrations_apply_once_and_the_schema_checks_out() {
    let pg = PostgresServer::start().expect("postgres");
    let mut client = connect(&pg).await;
    assert!(matches!(
        auscult_store::check_schema(&client).await,
        Err(StoreError::SchemaBehind { found: 0, .. })
    ));
    let applied = auscult_store::migrate(&mut client).await.expect("migrate");
    assert_eq!(
        applied,
        (1..=auscult_store::LATEST_VERSION).collect::<Vec<_>>()
    );
    assert!(
        auscult_store::migrate(&mut client)
            .await
            .expect("migrate again")
            .is_empty()
    );
    assert_eq!(
        auscult_store::check_schema(&client).await.expect("current"),
        auscult_store::SchemaStatus::Current
    );
}

#[tokio::test]
async fn a_schema_migrated_by_a_newer_release_is_served_but_not_migrated() {
    // During a rolling upgrade the new release migrates first and the old replicas keep serving.
    let (_pg, mut client) = migrated().await;
    let newer = auscult_store::LATEST_VERSION + 1;
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from a newer release')",
            &[&newer],
        )
        .await
        .expect("record a newer migration");
    assert_eq!(
        auscult_store::check_schema(&client)
            .await
            .expect("accepted"),
        auscult_store::SchemaStatus::Ahead {
            found: newer,
            known: auscult_store::LATEST_VERSION
        }
    );
    assert!(matches!(
        auscult_store::migrate(&mut client).await,
        Err(StoreError::SchemaAhead { found, .. }) if found == newer
    ));
}

#[tokio::test]
async fn tokens_admit_their_device_until_revoked() {
    let (_pg, mut client) = migrated().await;
    let token = auscult_store::add_device(&mut client, "gw-1", "press line 3")
        .await
        .expect("add");
    assert!(token.starts_with("auscult_") && token.len() > 40);
    assert_eq!(
        auscult_store::authenticate(&client, &token)
            .await
            .expect("auth")
            .as_deref(),
        Some("gw-1")
    );
    assert_eq!(
        auscult_store::authenticate(&client, "auscult_nope")
            .await
            .expect("auth"),
        None
    );
    assert!(matches!(
        auscult_store::add_device(&mut client, "gw-1", "").await,
        Err(StoreError::DeviceExists(id)) if id == "gw-1"
    ));
    // The plain token is not stored anywhere.
    let stored: i64 = client
        .query_one(
            "SELECT count(*) FROM device_tokens WHERE token_sha256 = convert_to($1, 'UTF8')",
            &[&token],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(stored, 0);
    let second = auscult_store::issue_token(&mut client, "gw-1")
        .await
        .expect("issue");
    assert_eq!(
        auscult_store::list_devices(&client).await.expect("list")[0].active_tokens,
        2
    );
    assert_eq!(
        auscult_store::revoke_tokens(&client, "gw-1")
            .await
            .expect("revoke"),
        2
    );
    assert_eq!(
        auscult_store::authenticate(&client, &token)
            .await
            .expect("auth"),
        None
    );
    assert_eq!(
        auscult_store::authenticate(&client, &second)
            .await
            .expect("auth"),
        None
    );
    assert!(matches!(
        auscult_store::revoke_tokens(&client, "gw-9").await,
        Err(StoreError::UnknownDevice(_))
    ));
}

#[tokio::test]
async fn a_batch_stores_new_frames_once_with_their_work_and_one_notify() {
    let (pg, mut client) = migrated().await;
    auscult_store::add_device(&mut client, "gw-1", "")
        .await
        .expect("add");
    auscult_store::enable_indexing(&client)
        .await
        .expect("indexing on");

    // A second connection listens, driving its connection itself so notifications are delivered.
    let (listener, mut connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect");
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = notes_tx.send(message);
        }
    });
    listener
        .batch_execute(&format!("LISTEN {}", auscult_store::FRAMES_CHANNEL))
        .await
        .expect("listen");

    let a = frame("gw-1", "mic-0", 1, 0.1);
    let b = frame("gw-1", "mic-0", 2, 0.2);
    let outcomes = auscult_store::insert_frames(&mut client, &[&a, &b, &a], SystemTime::now())
        .await
        .expect("insert");
    assert_eq!(
        outcomes,
        vec![
            InsertOutcome::Stored,
            InsertOutcome::Stored,
            InsertOutcome::Duplicate
        ]
    );

    // Resend of b, a new frame c, and a different frame under a's key.
    let c = frame("gw-1", "mic-1", 1, 0.3);
    let a_changed = frame("gw-1", "mic-0", 1, 0.9);
    let outcomes =
        auscult_store::insert_frames(&mut client, &[&b, &c, &a_changed], SystemTime::now())
            .await
            .expect("insert");
    assert_eq!(
        outcomes,
        vec![
            InsertOutcome::Duplicate,
            InsertOutcome::Stored,
            InsertOutcome::Conflict
        ]
    );

    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("SELECT count(*) FROM frames").await, 3);
    assert_eq!(
        count("SELECT count(*) FROM analysis_jobs WHERE state = 'queued'").await,
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM search_outbox WHERE kind = 'frame'").await,
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM frames WHERE sha256(samples) <> samples_sha256").await,
        0
    );
    let stored_level: f32 = client
        .query_one(
            "SELECT rms_dbfs FROM frames WHERE sensor_id = 'mic-0' AND seq = 1",
            &[],
        )
        .await
        .expect("level")
        .get(0);
    assert_eq!(
        stored_level, a.level.rms_dbfs,
        "the first version of the frame is kept"
    );

    // One notification per transaction that stored something, carrying the number of new frames.
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(30), notes.recv()).await;
        match next.expect("a notification within 30 s") {
            Some(AsyncMessage::Notification(n)) => payloads.push(n.payload().to_owned()),
            Some(_) => {}
            None => panic!("listener connection closed"),
        }
    }
    assert_eq!(payloads, vec!["2", "1"]);
}

#[tokio::test]
async fn frames_of_unknown_devices_are_refused_by_the_schema() {
    let (_pg, mut client) = migrated().await;
    let stray = frame("gw-unknown", "mic-0", 1, 0.1);
    let error = auscult_store::insert_frames(&mut client, &[&stray], SystemTime::now())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("foreign key"), "{error}");
    let count: i64 = client
        .query_one("SELECT count(*) FROM frames", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn the_registry_keeps_one_file_per_version_and_one_active_model() {
    let (pg, mut client) = migrated().await;
    let summary = serde_json::json!({"classes": ["valve/section_00/pat_00/normal"]});
    let publish = |version: &'static str, file: &'static [u8]| {
        let client = &client;
        let summary = summary.clone();
        async move { auscult_store::publish_model(client, version, file, &summary).await }
    };
    assert_eq!(
        publish("v1", b"first model").await.expect("publish"),
        auscult_store::PublishOutcome::Published
    );
    assert_eq!(
        publish("v1", b"first model").await.expect("again"),
        auscult_store::PublishOutcome::AlreadyPublished
    );
    assert!(matches!(
        publish("v1", b"other bytes").await,
        Err(StoreError::ModelVersionConflict(v)) if v == "v1"
    ));
    publish("v2", b"second model").await.expect("publish v2");
    assert!(
        auscult_store::active_model(&client)
            .await
            .expect("active")
            .is_none()
    );

    // Activation is announced on the models channel.
    let (listener, mut connection) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect");
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = sender.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener
        .batch_execute("LISTEN auscult_models")
        .await
        .expect("listen");

    auscult_store::activate_model(&mut client, "v1")
        .await
        .expect("activate v1");
    auscult_store::activate_model(&mut client, "v2")
        .await
        .expect("activate v2");
    let (version, file) = auscult_store::active_model(&client)
        .await
        .expect("active")
        .expect("one");
    assert_eq!(
        (version.as_str(), file.as_slice()),
        ("v2", b"second model".as_slice())
    );
    let listed = auscult_store::list_models(&client).await.expect("list");
    assert_eq!(listed.iter().filter(|m| m.active).count(), 1);
    assert_eq!(
        listed
            .iter()
            .find(|m| m.version == "v1")
            .map(|m| m.size_bytes),
        Some(11)
    );
    assert_eq!(listed[0].summary, summary);

    // Rolling back is activating an older version.
    auscult_store::activate_model(&mut client, "v1")
        .await
        .expect("roll back");
    let (version, _) = auscult_store::active_model(&client)
        .await
        .expect("active")
        .expect("one");
    assert_eq!(version, "v1");
    assert!(matches!(
        auscult_store::activate_model(&mut client, "v9").await,
        Err(StoreError::UnknownModel(v)) if v == "v9"
    ));
    for expected in ["v1", "v2", "v1"] {
        let (channel, payload) =
            tokio::time::timeout(Duration::from_secs(30), notifications.recv())
                .await
                .expect("a notification within 30 s")
                .expect("notification");
        assert_eq!(
            (channel.as_str(), payload.as_str()),
            ("auscult_models", expected)
        );
    }
}

#[tokio::test]
async fn pooled_sessions_are_bounded_and_the_url_can_say_otherwise() {
    let pg = PostgresServer::start().expect("postgres");
    let show = |pool: auscult_store::Pool| async move {
        let client = pool.get().await.expect("pooled connection");
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
                        current_setting('idle_in_transaction_session_timeout')",
                &[],
            )
            .await
            .expect("settings");
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        )
    };
    let pool = auscult_store::connect_pool(&pg.url(), 2, "test").expect("pool");
    assert_eq!(
        show(pool).await,
        ("2min".to_owned(), "30s".to_owned(), "2min".to_owned())
    );
    let url = format!("{}?options=-c%20statement_timeout%3D5s", pg.url());
    let pool = auscult_store::connect_pool(&url, 2, "test").expect("pool");
    assert_eq!(show(pool).await.0, "5s");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_batches_of_the_same_keys_in_opposite_orders_never_deadlock() {
    // A gateway resending on a new stream while its old batch is still being committed, and the two
    // batches holding the same frames in different orders: each must wait for the other, not deadlock.
    let pg = PostgresServer::start().expect("postgres");
    let mut setup = connect(&pg).await;
    auscult_store::migrate(&mut setup).await.expect("migrate");
    auscult_store::add_device(&mut setup, "gw-race", "test")
        .await
        .expect("device");
    for round in 0..20u64 {
        let forward: Vec<Frame> = (0..64)
            .map(|i| frame("gw-race", "mic-0", round * 64 + i, 0.1))
            .collect();
        let backward: Vec<Frame> = forward.iter().rev().cloned().collect();
        let insert = |frames: Vec<Frame>| {
            let url = pg.url();
            tokio::spawn(async move {
                let (mut client, connection) =
                    tokio_postgres::connect(&url, NoTls).await.expect("connect");
                tokio::spawn(connection);
                let refs: Vec<&Frame> = frames.iter().collect();
                auscult_store::insert_frames(&mut client, &refs, SystemTime::now()).await
            })
        };
        let (a, b) = (insert(forward), insert(backward));
        for outcome in [a.await.expect("join"), b.await.expect("join")] {
            let outcomes = outcome.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, InsertOutcome::Stored | InsertOutcome::Duplicate))
            );
        }
    }
}

#[tokio::test]
async fn frames_stored_compressed_read_back_exactly_as_received() {
    let (_pg, mut client) = migrated().await;
    auscult_store::add_device(&mut client, "gw-1", "")
        .await
        .expect("device");
    let mut frames: Vec<Frame> = (0..5)
        .map(|seq| frame("gw-1", "mic-1", seq, 0.1 * seq as f32))
        .collect();
    for frame in &mut frames[..4] {
        frame.compress_for_storage().expect("compress");
    }
    let refs: Vec<&Frame> = frames.iter().collect();
    auscult_store::insert_frames(&mut client, &refs, SystemTime::now())
        .await
        .expect("store");
    let rows = client
        .query(
            "SELECT id, encoding, length(samples), auscult_sample_frames(encoding, samples, channels)
             FROM frames ORDER BY seq",
            &[],
        )
        .await
        .expect("rows");
    let encodings: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(encodings, ["flac", "flac", "flac", "flac", "pcm_s16le"]);
    for (row, frame) in rows.iter().zip(&frames) {
        // The length of every stored frame, compressed or not, as the search projection reports it.
        assert_eq!(row.get::<_, i64>(3), frame.sample_count() as i64);
    }
    // A constant frame compresses to almost nothing.
    assert!(rows[1].get::<_, i32>(2) < 1_000);
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let audio = auscult_store::frame_audio(&client, &ids)
        .await
        .expect("audio");
    for (id, frame) in ids.iter().zip(&frames) {
        assert_eq!(audio[id].samples, frame.samples.to_vec());
        assert_eq!(audio[id].encoding, SampleEncoding::PcmS16le);
    }
    // A damaged stored frame is an error that names the damage, not wrong audio.
    client
        .execute(
            "UPDATE frames SET samples = substring(samples FROM 1 FOR 20) WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .expect("damage");
    assert!(matches!(
        auscult_store::frame_audio(&client, &ids[..1]).await,
        Err(StoreError::StoredAudio(_))
    ));
}

#[tokio::test]
async fn documents_are_queued_for_elasticsearch_only_while_indexing_is_on() {
    let (_pg, mut client) = migrated().await;
    auscult_store::add_device(&mut client, "gw-1", "")
        .await
        .expect("add");
    let outbox = async |client: &tokio_postgres::Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM search_outbox", &[])
            .await
            .expect("count")
            .get(0)
    };
    let store = async |client: &mut tokio_postgres::Client, seq: u64| {
        let f = frame("gw-1", "mic-0", seq, 0.1);
        auscult_store::insert_frames(client, &[&f], SystemTime::now())
            .await
            .expect("insert");
    };

    // A new installation does not index: frames are stored, nothing is queued for nobody.
    assert!(
        !auscult_store::indexing_enabled(&client)
            .await
            .expect("flag")
    );
    store(&mut client, 1).await;
    assert_eq!(outbox(&client).await, 0);

    // A listener with Elasticsearch switches indexing on (once); from then on every frame is queued.
    assert!(auscult_store::enable_indexing(&client).await.expect("on"));
    assert!(
        !auscult_store::enable_indexing(&client)
            .await
            .expect("already on")
    );
    store(&mut client, 2).await;
    store(&mut client, 3).await;
    assert_eq!(outbox(&client).await, 2);

    // Switched off: the queue is emptied and stays empty.
    assert_eq!(
        auscult_store::disable_indexing(&mut client)
            .await
            .expect("off"),
        2
    );
    store(&mut client, 4).await;
    assert_eq!(outbox(&client).await, 0);
    assert!(
        !auscult_store::indexing_enabled(&client)
            .await
            .expect("flag")
    );
}
