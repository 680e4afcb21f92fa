//! The Kibana saved objects shipped under `deploy/kibana/`: a data view per alias, the visualizations
//! and the dashboard. Compiled in so that `auscult kibana import` loads the objects matching the index
//! design of the same build, and checked here so that a broken file never ships.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use auscult_store::SearchKind;

use crate::design::{KindLayout, fields_of};

/// `deploy/kibana/auscult.ndjson`.
pub const SAVED_OBJECTS: &str = include_str!("../../../deploy/kibana/auscult.ndjson");

/// One saved object, as the NDJSON holds it.
#[derive(Debug, Clone)]
pub struct SavedObject {
    pub id: String,
    pub kind: String,
    pub title: String,
    pub attributes: Value,
    pub references: Vec<(String, String, String)>,
}

/// Parses saved-objects NDJSON and checks it: every line an object with id, type and attributes,
/// every reference resolving to an object of the file, every field a visualization, query or data
/// view names present in the index templates, every visualization on a dashboard. Returns the
/// objects, or every problem found.
pub fn check_saved_objects(ndjson: &str) -> Result<Vec<SavedObject>, Vec<String>> {
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    for (n, line) in ndjson
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line_no = n + 1;
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("line {line_no}: not JSON: {e}"));
                continue;
            }
        };
        let (Some(id), Some(kind), Some(attributes)) = (
            value["id"].as_str(),
            value["type"].as_str(),
            value.get("attributes").filter(|a| a.is_object()),
        ) else {
            problems.push(format!("line {line_no}: needs id, type and attributes"));
            continue;
        };
        let references = value["references"]
            .as_array()
            .map(|refs| {
                refs.iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap_or("").to_owned(),
                            r["type"].as_str().unwrap_or("").to_owned(),
                            r["id"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        objects.push(SavedObject {
            id: id.to_owned(),
            kind: kind.to_owned(),
            title: attributes["title"].as_str().unwrap_or("").to_owned(),
            attributes: attributes.clone(),
            references,
        });
    }
    let by_id: HashMap<(&str, &str), &SavedObject> = objects
        .iter()
        .map(|o| ((o.kind.as_str(), o.id.as_str()), o))
        .collect();
    if by_id.len() != objects.len() {
        problems.push("two objects share a type and id".into());
    }
    let fields_of_view = |view: &SavedObject| -> Option<BTreeSet<String>> {
        SearchKind::ALL
            .into_iter()
            .find(|k| k.alias() == view.title)
            .map(fields_of)
    };
    for object in &objects {
        let name = format!("{} {:?}", object.kind, object.id);
        for (reference, kind, id) in &object.references {
            if !by_id.contains_key(&(kind.as_str(), id.as_str())) {
                problems.push(format!(
                    "{name}: reference {reference} to {kind} {id:?} does not resolve"
                ));
            }
        }
        match object.kind.as_str() {
            "index-pattern" => match fields_of_view(object) {
                None => problems.push(format!(
                    "{name}: data view {:?} is no auscult alias",
                    object.title
                )),
                Some(fields) => {
                    let time = object.attributes["timeFieldName"].as_str().unwrap_or("");
                    if !fields.contains(time) {
                        problems.push(format!(
                            "{name}: time field {time:?} is not in the template"
                        ));
                    }
                }
            },
            "visualization" => {
                let view = object
                    .references
                    .iter()
                    .find(|(n, _, _)| n == "kibanaSavedObjectMeta.searchSourceJSON.index")
                    .and_then(|(_, kind, id)| by_id.get(&(kind.as_str(), id.as_str())));
                let Some(fields) = view.and_then(|v| fields_of_view(v)) else {
                    problems.push(format!("{name}: no data view"));
                    continue;
                };
                for field in visualization_fields(object) {
                    if !fields.contains(&field) {
                        problems.push(format!("{name}: field {field:?} is not in the template"));
                    }
                }
            }
            "dashboard" => {
                let panels: Vec<Value> = object.attributes["panelsJSON"]
                    .as_str()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                if panels.is_empty() {
                    problems.push(format!("{name}: no panels"));
                }
                for panel in &panels {
                    let reference = panel["panelRefName"].as_str().unwrap_or("");
                    if !object.references.iter().any(|(n, _, _)| n == reference) {
                        problems.push(format!("{name}: panel {reference:?} has no reference"));
                    }
                }
            }
            other => problems.push(format!("{name}: unexpected type {other:?}")),
        }
    }
    // A visualization no dashboard shows is one an operator never sees: a chart added to the
    // file and forgotten on the dashboard is as broken as a dangling reference.
    // What a dashboard shows is its panels; a reference no panel names shows nothing.
    let on_a_dashboard: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o.kind == "dashboard")
        .flat_map(|dashboard| {
            let panels: Vec<Value> = dashboard.attributes["panelsJSON"]
                .as_str()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default();
            dashboard
                .references
                .iter()
                .filter(move |(name, kind, _)| {
                    kind == "visualization"
                        && panels.iter().any(|p| p["panelRefName"] == name.as_str())
                })
                .map(|(_, _, id)| id.as_str())
        })
        .collect();
    for object in objects.iter().filter(|o| o.kind == "visualization") {
        if !on_a_dashboard.contains(object.id.as_str()) {
            problems.push(format!(
                "visualization {:?} ({:?}) is on no dashboard",
                object.id, object.title
            ));
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

/// The visualization's state (`visState`), parsed.
pub fn visualization_state(object: &SavedObject) -> Value {
    object.attributes["visState"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null)
}

/// The visualization's query (`field:value` KQL), parsed into its terms.
pub fn visualization_query(object: &SavedObject) -> Vec<(String, String)> {
    let source: Value = object.attributes["kibanaSavedObjectMeta"]["searchSourceJSON"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    source["query"]["query"]
        .as_str()
        .unwrap_or("")
        .split(" and ")
        .filter_map(|term| term.split_once(':'))
        .map(|(f, v)| (f.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Every field a visualization aggregates on or queries.
fn visualization_fields(object: &SavedObject) -> Vec<String> {
    let state = visualization_state(object);
    let mut fields: Vec<String> = state["aggs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["params"]["field"].as_str().map(str::to_owned))
        .collect();
    fields.extend(visualization_query(object).into_iter().map(|(f, _)| f));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_saved_objects_are_whole_and_match_the_templates() {
        let objects = check_saved_objects(SAVED_OBJECTS).unwrap_or_else(|p| panic!("{p:#?}"));
        let count = |kind: &str| objects.iter().filter(|o| o.kind == kind).count();
        assert_eq!(count("index-pattern"), 4);
        assert_eq!(count("dashboard"), 1);
        assert!(count("visualization") >= 6);
    }

    #[test]
    fn broken_saved_objects_are_reported() {
        let view = r#"{"id":"v","type":"index-pattern","attributes":{"title":"auscult-results","timeFieldName":"captured_at"},"references":[]}"#;
        let vis = r#"{"id":"x","type":"visualization","attributes":{"title":"x","visState":"{\"aggs\":[{\"params\":{\"field\":\"no_such_field\"}}]}","kibanaSavedObjectMeta":{"searchSourceJSON":"{\"query\":{\"query\":\"anomalous:true\"}}"}},"references":[{"name":"kibanaSavedObjectMeta.searchSourceJSON.index","type":"index-pattern","id":"v"}]}"#;
        let dash = r#"{"id":"d","type":"dashboard","attributes":{"title":"d","panelsJSON":"[{\"panelRefName\":\"panel_1\"}]"},"references":[{"name":"panel_1","type":"visualization","id":"gone"}]}"#;
        let problems = check_saved_objects(&format!("{view}\n{vis}\n{dash}\nnot json\n"))
            .expect_err("problems");
        assert!(
            problems.iter().any(|p| p.contains("no_such_field")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("does not resolve")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("line 4: not JSON")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains(r#"visualization "x" ("x") is on no dashboard"#)),
            "{problems:?}"
        );
    }

    #[test]
    fn a_shipped_visualization_left_off_the_dashboard_is_reported() {
        let objects = check_saved_objects(SAVED_OBJECTS).unwrap_or_else(|p| panic!("{p:#?}"));
        let dashboard = objects
            .iter()
            .find(|o| o.kind == "dashboard")
            .expect("a dashboard");
        let (panel, _, dropped) = dashboard
            .references
            .iter()
            .find(|(_, kind, _)| kind == "visualization")
            .expect("a visualization on the dashboard");
        // The same file with that one panel taken off the dashboard, its reference left behind
        // or removed too.
        for drop_reference in [false, true] {
            let edited: Vec<String> = SAVED_OBJECTS
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|line| {
                    let mut value: Value =
                        serde_json::from_str(line).expect("shipped line is JSON");
                    if value["type"] == "dashboard" {
                        let panels: Vec<Value> = serde_json::from_str(
                            value["attributes"]["panelsJSON"].as_str().expect("panels"),
                        )
                        .expect("panels are JSON");
                        let kept: Vec<Value> = panels
                            .into_iter()
                            .filter(|p| p["panelRefName"] != panel.as_str())
                            .collect();
                        value["attributes"]["panelsJSON"] =
                            Value::String(Value::Array(kept).to_string());
                        if let Some(refs) = value["references"].as_array_mut()
                            && drop_reference
                        {
                            refs.retain(|r| r["name"] != panel.as_str());
                        }
                    }
                    value.to_string()
                })
                .collect();
            let problems = check_saved_objects(&edited.join("\n")).expect_err("a problem");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains(&format!("visualization {dropped:?}"))
                    && problems[0].ends_with("is on no dashboard"),
                "{problems:?}"
            );
        }
    }
}
