//! The queries behind the shipped Kibana dashboard, run against indexed data: each visualization's
//! aggregations (as Kibana builds them from its saved state) return what PostgreSQL holds.

mod common;

use std::collections::BTreeMap;

use auscult_search::kibana::{
    SAVED_OBJECTS, SavedObject, check_saved_objects, visualization_query, visualization_state,
};
use common::Fixture;
use serde_json::{Value, json};

/// The search Kibana sends for a visualization: its query as term filters, its bucket aggregations
/// nested in order, its metrics inside the innermost bucket.
fn search_of(object: &SavedObject) -> Value {
    let state = visualization_state(object);
    let aggs = state["aggs"].as_array().cloned().unwrap_or_default();
    let mut metrics = serde_json::Map::new();
    let mut buckets = Vec::new();
    for agg in &aggs {
        let (id, kind, field) = (
            agg["id"].as_str().unwrap_or(""),
            agg["type"].as_str().unwrap_or(""),
            agg["params"]["field"].as_str().unwrap_or(""),
        );
        match kind {
            "count" => {}
            "max" | "avg" | "min" | "sum" => {
                metrics.insert(id.to_owned(), json!({kind: {"field": field}}));
            }
            "median" => {
                metrics.insert(id.to_owned(), json!({"percentiles": {"field": field, "percents": [50]}}));
            }
            "terms" => buckets.push((id.to_owned(), json!({"terms": {"field": field, "size": agg["params"]["size"]}}))),
            // Every chart's interval is `auto`, which Kibana turns into a fixed interval from the
            // time range shown (about fifty buckets: half an hour for the dashboard's default
            // day) before it sends the search. Any fixed interval stands for it; a minute holds
            // the fixture's twelve seconds of frames in one or two buckets, each checked.
            "date_histogram" => buckets.push((id.to_owned(), json!({"date_histogram": {"field": field, "fixed_interval": "1m", "min_doc_count": 1}}))),
            other => panic!("{}: aggregation {other} not understood by this test", object.id),
        }
    }
    let mut inner = Value::Object(metrics);
    for (id, mut bucket) in buckets.into_iter().rev() {
        if inner.as_object().is_some_and(|m| !m.is_empty()) {
            bucket["aggs"] = inner;
        }
        inner = json!({id: bucket});
    }
    let filters: Vec<Value> = visualization_query(object)
        .into_iter()
        .map(|(field, value)| {
            let value = match value.as_str() {
                "true" => json!(true),
                "false" => json!(false),
                _ => json!(value),
            };
            json!({"term": {field: value}})
        })
        .collect();
    json!({"size": 0, "query": {"bool": {"filter": filters}}, "aggs": inner})
}

/// `{key: doc_count}` of the outermost bucket aggregation.
fn buckets(answer: &Value) -> BTreeMap<String, i64> {
    let aggs = answer["aggregations"].as_object().expect("aggregations");
    let outer = aggs.values().next().expect("one aggregation");
    outer["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            let key = b["key_as_string"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| match &b["key"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            (key, b["doc_count"].as_i64().expect("count"))
        })
        .collect()
}

#[tokio::test]
async fn every_dashboard_visualization_returns_what_postgresql_holds() {
    let mut fixture = Fixture::start().await;
    fixture.store_frames(&["mic-a", "7"], 12).await;
    fixture.score_all(&["mic-a"]).await;
    fixture.health_event("7", "silent").await;
    fixture.health_event("7", "recovered").await;
    let indexer = fixture.indexer();
    fixture.drain(&indexer).await;
    let cluster = fixture.cluster();
    cluster.refresh("auscult-*").await.expect("refresh");

    let objects = check_saved_objects(SAVED_OBJECTS).expect("saved objects");
    let views: BTreeMap<&str, &str> = objects
        .iter()
        .filter(|o| o.kind == "index-pattern")
        .map(|o| (o.id.as_str(), o.title.as_str()))
        .collect();
    let mut answers = BTreeMap::new();
    for object in objects.iter().filter(|o| o.kind == "visualization") {
        let view = object
            .references
            .iter()
            .find_map(|(_, _, id)| views.get(id.as_str()))
            .expect("data view");
        let answer = cluster
            .search(view, &search_of(object))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", object.id));
        let found = buckets(&answer);
        assert!(!found.is_empty(), "{} returned no buckets", object.id);
        answers.insert(object.id.clone(), (answer, found));
    }

    // Anomalous windows by machine: exactly the anomalous verdicts per machine.
    let anomalous = fixture
        .count("SELECT count(*) FROM analysis_results WHERE anomalous")
        .await;
    assert_eq!(
        answers["auscult-anomalous-by-machine"].1,
        BTreeMap::from([("valve/section_00".to_owned(), anomalous)])
    );
    // The most deviating band of every anomalous window.
    assert_eq!(
        answers["auscult-deviating-bands"].1,
        BTreeMap::from([("1000-2000 Hz".to_owned(), anomalous)])
    );
    // What flagged each anomalous clip: the part PostgreSQL names, per machine.
    let anomalous_clips = fixture
        .count("SELECT count(*) FROM analysis_results WHERE anomalous AND clip")
        .await;
    let flagging: BTreeMap<String, i64> = fixture
        .client
        .query(
            "SELECT parts->>'furthest', count(*) FROM analysis_results
             WHERE anomalous AND clip GROUP BY 1",
            &[],
        )
        .await
        .expect("parts")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(!flagging.is_empty(), "no anomalous clip to chart");
    let (by_part, machines) = &answers["auscult-flagging-part"];
    assert_eq!(
        machines,
        &BTreeMap::from([("valve/section_00".to_owned(), anomalous_clips)])
    );
    let parts: BTreeMap<String, i64> = by_part["aggregations"]["2"]["buckets"][0]["3"]["buckets"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|b| {
            let key = b["key"].as_str().expect("part").to_owned();
            (key, b["doc_count"].as_i64().expect("count"))
        })
        .collect();
    assert_eq!(parts, flagging);
    // Drift: the median score ÷ threshold of each machine's clip verdicts, minute by minute, over
    // exactly those clips (window verdicts left out).
    let clips_by_minute: BTreeMap<(i64, String), Vec<f64>> = fixture
        .client
        .query(
            "SELECT (extract(epoch FROM date_trunc('minute', captured_at, 'UTC')) * 1000)::int8,
                    profile, array_agg(anomaly_score / threshold ORDER BY anomaly_score / threshold)
             FROM analysis_results WHERE clip GROUP BY 1, 2",
            &[],
        )
        .await
        .expect("clips by minute")
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    let windows = fixture
        .count("SELECT count(*) FROM analysis_results WHERE NOT clip")
        .await;
    assert!(windows > 0, "no window verdict to leave out");
    let typical = &answers["auscult-typical-clip-score"].0;
    let mut charted = BTreeMap::new();
    for minute in typical["aggregations"]["2"]["buckets"]
        .as_array()
        .expect("minutes")
    {
        let at = minute["key"].as_i64().expect("minute");
        for machine in minute["3"]["buckets"].as_array().expect("machines") {
            let key = (at, machine["key"].as_str().expect("machine").to_owned());
            let median = machine["1"]["values"]["50.0"].as_f64().expect("median");
            charted.insert(key, (machine["doc_count"].as_i64().expect("count"), median));
        }
    }
    assert_eq!(
        charted.keys().collect::<Vec<_>>(),
        clips_by_minute.keys().collect::<Vec<_>>()
    );
    for (key, scores) in &clips_by_minute {
        let (count, median) = charted[key];
        assert_eq!(count, scores.len() as i64, "{key:?}");
        // Between the middle two, where an implementation's interpolation may put it.
        let (lower, upper) = (scores[(scores.len() - 1) / 2], scores[scores.len() / 2]);
        assert!(
            (lower - 1e-9..=upper + 1e-9).contains(&median),
            "{key:?}: median {median} of {scores:?}"
        );
    }
    // One alert, firing, on the valve, with its peak score.
    let (alerts, by_machine) = &answers["auscult-alerts-table"];
    assert_eq!(
        by_machine,
        &BTreeMap::from([("valve/section_00".to_owned(), 1)])
    );
    let machine = &alerts["aggregations"]["3"]["buckets"][0];
    assert_eq!(machine["4"]["buckets"][0]["key"], "firing");
    assert_eq!(machine["4"]["buckets"][0]["2"]["value"], 9.0);
    // Silent sensors: only the sensor that went silent, not the recovery.
    assert_eq!(
        answers["auscult-silent-sensors"].1,
        BTreeMap::from([("gw-1/7".to_owned(), 1)])
    );
    // Rates: every stored frame and every verdict falls in some minute.
    let total = |id: &str| answers[id].1.values().sum::<i64>();
    assert_eq!(total("auscult-ingest-rate"), 24);
    assert_eq!(total("auscult-scoring-rate"), 24);
    assert_eq!(total("auscult-indexing-lag"), 24);
    // Score over threshold: the valve peaks at 9/4, the fan stays at 1/4.
    let score = &answers["auscult-score-over-threshold"].0;
    let mut peaks: BTreeMap<String, f64> = BTreeMap::new();
    for minute in score["aggregations"]["2"]["buckets"]
        .as_array()
        .expect("minutes")
    {
        for machine in minute["3"]["buckets"].as_array().expect("machines") {
            let key = machine["key"].as_str().expect("machine").to_owned();
            let value = machine["1"]["value"].as_f64().expect("max");
            let peak = peaks.entry(key).or_insert(f64::MIN);
            *peak = peak.max(value);
        }
    }
    assert_eq!(peaks.get("valve/section_00"), Some(&2.25));
    assert_eq!(
        peaks.len(),
        1,
        "results carry the profile as machine: {peaks:?}"
    );
}
