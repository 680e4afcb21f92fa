//! The indexer against a real PostgreSQL and a real server speaking the Elasticsearch API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use auscult_search::design::{self, KindLayout};
use auscult_search::{Indexer, IndexerError, projection};
use auscult_store::SearchKind;
use auscult_testkit::wait_for;
use common::{Fixture, fault_proxy};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Frames of two sensors, one of them anomalous enough to fire an alert, and a health event.
async fn populated() -> Fixture {
    let mut fixture = Fixture::start().await;
    fixture.store_frames(&["mic-a", "7"], 12).await;
    fixture.score_all(&["mic-a"]).await;
    fixture.health_event("7", "silent").await;
    fixture
}

#[tokio::test]
async fn switching_indexing_on_queues_what_was_stored_while_it_was_off() {
    let mut fixture = Fixture::start().await;
    // A plant that ran without Elasticsearch: nothing queued while it stored.
    let dropped = auscult_store::disable_indexing(&mut fixture.client)
        .await
        .expect("off");
    assert_eq!(dropped, 0);
    fixture.store_frames(&["mic-a", "7"], 12).await;
    fixture.score_all(&["mic-a"]).await;
    assert_eq!(fixture.count("SELECT count(*) FROM search_outbox").await, 0);
    // (Every alias needs a document for the counts below; this one queues itself, as written here.)
    fixture.health_event("7", "silent").await;

    // A listener with Elasticsearch arrives: indexing goes on and everything within retention follows.
    let indexer = fixture.indexer();
    fixture.drain(&indexer).await;
    let source = fixture.source_counts().await;
    assert_eq!(
        fixture.indexed_counts(&fixture.cluster()).await,
        Some(source)
    );
    assert!(
        auscult_store::indexing_enabled(&fixture.client)
            .await
            .expect("flag")
    );
}

/// The one alert document the cluster holds.
async fn alert_document(cluster: &auscult_search::Cluster) -> serde_json::Value {
    cluster.refresh("auscult-alerts").await.expect("refresh");
    let answer = cluster
        .search("auscult-alerts", &json!({"size": 2}))
        .await
        .expect("search");
    let hits = answer["hits"]["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 1, "{answer}");
    hits[0]["_source"].clone()
}

#[tokio::test]
async fn a_firing_alerts_document_follows_it_while_it_fires() {
    let mut fixture = Fixture::start().await;
    let indexer = fixture.indexer();
    let cluster = fixture.cluster();
    fixture.store_frames(&["mic-a"], 6).await;
    fixture.score_all(&["mic-a"]).await;
    fixture.drain(&indexer).await;
    let first = alert_document(&cluster).await;
    assert_eq!(first["state"], "firing");

    // Still anomalous: the same alert fires on, with a later last frame and more anomalous windows.
    fixture.store_frames(&["mic-a"], 6).await;
    fixture.score_all(&["mic-a"]).await;
    fixture.drain(&indexer).await;
    let row = fixture
        .client
        .query_one(
            "SELECT last_frame_id, anomalous_windows, state FROM alerts",
            &[],
        )
        .await
        .expect("alert");
    let (last_frame, windows, state): (i64, i32, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "firing");
    let later = alert_document(&cluster).await;
    assert!(
        later["last_frame_id"].as_i64() > first["last_frame_id"].as_i64(),
        "the document moved on: {first} → {later}"
    );
    assert_eq!(later["last_frame_id"].as_i64(), Some(last_frame));
    assert_eq!(
        later["anomalous_windows"].as_i64(),
        Some(i64::from(windows))
    );
}

#[tokio::test]
async fn everything_stored_is_indexed_once_and_resends_change_nothing() {
    let fixture = populated().await;
    let indexer = fixture.indexer();
    let cluster = fixture.cluster();
    let source = fixture.source_counts().await;
    assert_eq!(source, [24, 24, 1, 1]);

    fixture.drain(&indexer).await;
    assert_eq!(fixture.indexed_counts(&cluster).await, Some(source));

    // Documents carry what operators chart, under the templates' names.
    let hits = cluster
        .search(
            "auscult-results",
            &json!({
                "query": {"bool": {"filter": [{"term": {"sensor_id": "mic-a"}}, {"term": {"clip": true}}]}},
                "size": 1
            }),
        )
        .await
        .expect("search");
    let result = &hits["hits"]["hits"][0];
    assert!(
        result["_index"]
            .as_str()
            .expect("index")
            .starts_with("auscult-results-20")
    );
    let doc = &result["_source"];
    assert_eq!(doc["machine"], "valve/section_00");
    assert_eq!(doc["anomalous"], true);
    assert_eq!(doc["top_band"], "1000-2000 Hz");
    assert_eq!(doc["score_over_threshold"], 2.25);
    assert_eq!(doc["parts"]["furthest"], "impulsiveness");
    assert_eq!(doc["parts"]["impulsiveness_side"], "duller");
    assert!(doc["index_lag_ms"].as_f64().expect("lag") >= 0.0);
    let frame = cluster
        .search(
            "auscult-frames",
            &json!({"query": {"term": {"sensor_id": "7"}}, "size": 1}),
        )
        .await
        .expect("search")["hits"]["hits"][0]["_source"]
        .clone();
    assert_eq!(frame["machine"], "fan/section_01");
    assert_eq!(frame["duration_s"], 0.1);
    assert!(frame["rms_dbfs"].as_f64().expect("rms") < 0.0);

    // Everything queued again (a restored outbox, a second indexer): same documents, no copies.
    let mut client = common::connect(&fixture.pg.url()).await;
    client
        .execute("UPDATE search_projection SET refilled_at = NULL", &[])
        .await
        .expect("reset");
    let queued = auscult_store::refill_outbox(
        &mut client,
        &auscult_search::Retention::default().refill_windows(),
        std::time::SystemTime::now(),
    )
    .await
    .expect("refill");
    assert_eq!(queued, Some(50));
    fixture.drain(&indexer).await;
    assert_eq!(fixture.indexed_counts(&cluster).await, Some(source));
    assert_eq!(
        fixture
            .count("SELECT count(*) FROM search_dead_letters")
            .await,
        0
    );
}

#[tokio::test]
async fn a_resolved_alert_replaces_its_firing_document() {
    let mut fixture = populated().await;
    let indexer = fixture.indexer();
    let cluster = fixture.cluster();
    fixture.drain(&indexer).await;
    let alert = |cluster: auscult_search::Cluster| async move {
        cluster.refresh("auscult-alerts").await.expect("refresh");
        cluster
            .search("auscult-alerts", &json!({"size": 5, "version": true}))
            .await
            .expect("search")["hits"]["hits"]
            .clone()
    };
    let firing = alert(cluster.clone()).await;
    assert_eq!(firing.as_array().map(Vec::len), Some(1));
    assert_eq!(firing[0]["_source"]["state"], "firing");

    // The valve sounds normal again: five normal clip verdicts resolve the alert. Every fourth
    // verdict judges a window, so seven frames hold at least five clips.
    fixture.store_frames(&["mic-a"], 7).await;
    fixture.score_all(&[]).await;
    fixture.drain(&indexer).await;
    let resolved = alert(cluster).await;
    assert_eq!(
        resolved.as_array().map(Vec::len),
        Some(1),
        "one document per alert"
    );
    assert_eq!(resolved[0]["_source"]["state"], "resolved");
    assert_eq!(resolved[0]["_version"], 2);
    assert!(
        resolved[0]["_source"]["duration_s"]
            .as_f64()
            .expect("duration")
            >= 0.0
    );
}

#[tokio::test]
async fn a_killed_and_restarted_cluster_converges_to_exact_counts() {
    let mut fixture = populated().await;
    let indexer = Arc::new(fixture.indexer());
    let cluster = fixture.cluster();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&indexer).run(shutdown.clone()));

    // Frames keep arriving while the cluster dies and comes back empty.
    for batch in 0..12 {
        fixture.store_frames(&["mic-a", "7"], 5).await;
        if batch == 4 {
            wait_for(Duration::from_secs(30), || async {
                (fixture.count("SELECT count(*) FROM search_outbox").await == 0).then_some(())
            })
            .await
            .expect("indexed before the kill");
            fixture.search.kill();
        }
        if batch == 8 {
            // Storing never waited for the cluster: the outbox holds what it could not take.
            assert!(fixture.count("SELECT count(*) FROM search_outbox").await >= 30);
            fixture.search.restart().await.expect("restart");
        }
    }
    fixture.score_all(&["mic-a"]).await;
    let source = fixture.source_counts().await;
    let converged = wait_for(Duration::from_secs(60), || async {
        let outbox = fixture.count("SELECT count(*) FROM search_outbox").await;
        let indexed = fixture.indexed_counts(&cluster).await?;
        (outbox == 0 && indexed == source).then_some(indexed)
    })
    .await;
    assert_eq!(
        converged,
        Some(source),
        "the restarted cluster holds exactly what PostgreSQL holds"
    );
    assert_eq!(
        fixture
            .count("SELECT count(*) FROM search_dead_letters")
            .await,
        0
    );
    let refilled: Option<std::time::SystemTime> = fixture
        .client
        .query_one("SELECT refilled_at FROM search_projection", &[])
        .await
        .expect("projection")
        .get(0);
    assert!(
        refilled.is_some(),
        "the empty cluster was noticed and refilled"
    );
    shutdown.cancel();
    running.await.expect("indexer stops");
}

#[tokio::test]
async fn documents_answered_429_are_sent_again_alone() {
    let fixture = populated().await;
    let (proxy, tally) = fault_proxy::start(
        fixture.search.url(),
        fault_proxy::Faults {
            reject_every_nth_request: 3,
            reject_every_nth_document: 4,
        },
    )
    .await;
    let settings = auscult_search::ElasticSettings {
        batch_documents: 10,
        ..fixture.settings(&proxy)
    };
    let indexer = Indexer::new(settings, fixture.pool.clone()).expect("indexer");
    let source = fixture.source_counts().await;
    for _ in 0..200 {
        // A request rejected as a whole fails the round; the next round sends it again.
        if let Err(e) = indexer.round().await {
            eprintln!("round: {e}");
        }
        if fixture.count("SELECT count(*) FROM search_outbox").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fixture.count("SELECT count(*) FROM search_outbox").await, 0);
    assert_eq!(
        fixture.indexed_counts(&fixture.cluster()).await,
        Some(source)
    );

    let tally = tally.lock().expect("tally");
    assert!(tally.rejected_requests > 0 && !tally.rejected_alone.is_empty());
    let documents: i64 = source.iter().sum();
    assert_eq!(tally.forwarded.len() as i64, documents);
    for (key, presented) in &tally.presented {
        // Each document reached the server once; it was sent again only as often as it was refused.
        assert_eq!(tally.forwarded.get(key), Some(&1), "{key} forwarded once");
        let refused = tally.rejected_alone.get(key).unwrap_or(&0)
            + tally.rejected_with_request.get(key).unwrap_or(&0);
        assert_eq!(
            *presented,
            1 + refused,
            "{key} sent {presented} times, refused {refused}"
        );
    }
}

#[tokio::test]
async fn a_mapping_conflict_is_dead_lettered_and_the_rest_flows_on() {
    let fixture = populated().await;
    let indexer = fixture.indexer();
    let cluster = fixture.cluster();
    projection::apply_design(&cluster, 0).await.expect("design");
    // Someone created this month's frames index by hand with sensor_id as a number: frames of
    // sensor "7" fit, frames of "mic-a" cannot.
    let month: String = fixture
        .client
        .query_one(
            "SELECT to_char(min(captured_at) AT TIME ZONE 'UTC', 'YYYY.MM') FROM frames",
            &[],
        )
        .await
        .expect("month")
        .get(0);
    let index = format!("auscult-frames-{month}");
    create_index(
        &fixture,
        &index,
        json!({"mappings": {"properties": {"sensor_id": {"type": "long"}}}}),
    )
    .await;

    fixture.drain(&indexer).await;
    let dead = auscult_store::list_dead_letters(&fixture.client, 100)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 12, "the twelve mic-a frames: {dead:?}");
    assert!(dead.iter().all(|d| d.kind == "frame"
        && d.refusal.status == 400
        && d.refusal.index_name == index
        && !d.refusal.reason.is_empty()));
    let [frames, results, alerts, health] = fixture.indexed_counts(&cluster).await.expect("counts");
    assert_eq!((frames, results, alerts, health), (12, 24, 1, 1));

    // Fixed by dropping the hand-made index (and the frames it held): replaying the dead letters and
    // queueing what the dropped index held completes the projection.
    cluster.delete_index(&index).await.expect("delete");
    let mut client = common::connect(&fixture.pg.url()).await;
    assert_eq!(
        auscult_store::replay_dead_letters(&mut client)
            .await
            .expect("replay"),
        12
    );
    let requeued = auscult_store::refill_outbox(
        &mut client,
        &auscult_search::Retention::default().refill_windows(),
        std::time::SystemTime::now(),
    )
    .await
    .expect("reindex");
    assert_eq!(
        requeued,
        Some(12 + 24 + 1 + 1),
        "all but the twelve replayed frames"
    );
    fixture.drain(&indexer).await;
    assert_eq!(fixture.indexed_counts(&cluster).await, Some([24, 24, 1, 1]));
    assert_eq!(
        fixture
            .count("SELECT count(*) FROM search_dead_letters")
            .await,
        0
    );
}

#[tokio::test]
async fn a_cluster_holding_another_databases_projection_is_left_alone() {
    let fixture = populated().await;
    let indexer = fixture.indexer();
    projection::write_marker(&fixture.cluster(), "another-installation")
        .await
        .expect("marker");
    let error = indexer.round().await.expect_err("refused");
    assert!(
        matches!(error, IndexerError::ForeignProjection(ref id) if id == "another-installation")
    );
    assert!(fixture.count("SELECT count(*) FROM search_outbox").await > 0);
}

#[tokio::test]
async fn months_past_retention_are_deleted() {
    let fixture = Fixture::start().await;
    let cluster = fixture.cluster();
    projection::apply_design(&cluster, 0).await.expect("design");
    let http = reqwest::Client::new();
    let this_month = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let this_month = this_month[..7].replace('-', ".");
    for index in [
        "auscult-frames-2020.01".to_owned(),
        format!("auscult-frames-{this_month}"),
        "auscult-alerts-2020.01".to_owned(),
    ] {
        let put = http
            .put(format!("{}/{index}", fixture.search.url()))
            .send()
            .await
            .expect("create");
        assert!(put.status().is_success());
    }
    let deleted = projection::prune(
        &cluster,
        &auscult_search::Retention::default(),
        std::time::SystemTime::now(),
    )
    .await
    .expect("prune");
    // Frames keep 30 days and alerts two years: both 2020 months are gone, this month stays.
    assert_eq!(
        deleted,
        ["auscult-frames-2020.01", "auscult-alerts-2020.01"]
    );
    assert_eq!(
        cluster.indices("auscult-*").await.expect("indices"),
        [format!("auscult-frames-{this_month}")]
    );
}

#[tokio::test]
async fn a_month_indexed_under_an_earlier_design_takes_the_fields_added_since() {
    let fixture = populated().await;
    let month: String = fixture
        .client
        .query_one(
            "SELECT to_char(min(captured_at) AT TIME ZONE 'UTC', 'YYYY.MM') FROM analysis_results",
            &[],
        )
        .await
        .expect("month")
        .get(0);
    // This month's results index as a release before the clips' parts made it: the design's
    // strict mappings without them (made before any template is in place, so none adds them).
    let template: serde_json::Value =
        serde_json::from_str(SearchKind::Result.index_template()).expect("template");
    let mut mappings = template["template"]["mappings"].clone();
    let properties = mappings["properties"].as_object_mut().expect("properties");
    assert!(properties.remove("parts").is_some());
    for (_, component) in design::COMPONENT_TEMPLATES {
        let component: serde_json::Value = serde_json::from_str(component).expect("component");
        if let Some(fields) = component["template"]["mappings"]["properties"].as_object() {
            properties.extend(fields.clone());
        }
    }
    let index = format!("auscult-results-{month}");
    create_index(
        &fixture,
        &index,
        json!({"mappings": mappings, "aliases": {"auscult-results": {}}}),
    )
    .await;

    // The indexer applies the design as it starts: the month made before it gets the new fields,
    // and every verdict, parts and all, is indexed into it.
    let indexer = fixture.indexer();
    let cluster = fixture.cluster();
    fixture.drain(&indexer).await;
    assert_eq!(
        fixture
            .count("SELECT count(*) FROM search_dead_letters")
            .await,
        0
    );
    assert_eq!(fixture.indexed_counts(&cluster).await, Some([24, 24, 1, 1]));
    let hits = cluster
        .search(
            &index,
            &json!({"query": {"exists": {"field": "parts.furthest"}}}),
        )
        .await
        .expect("search");
    let with_parts = fixture
        .count("SELECT count(*) FROM analysis_results WHERE parts IS NOT NULL")
        .await;
    assert!(with_parts > 0);
    assert_eq!(hits["hits"]["total"]["value"], with_parts, "{hits}");
}

/// Creates `index` in the fixture's cluster by hand, as `body` says.
async fn create_index(fixture: &Fixture, index: &str, body: serde_json::Value) {
    let created = reqwest::Client::new()
        .put(format!("{}/{index}", fixture.search.url()))
        .json(&body)
        .send()
        .await
        .expect("create index");
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap_or_default()
    );
}
