//! Keeping the cluster's projection whole: applying the index design, knowing whether the cluster
//! still holds this database's projection, and deleting months past retention.
//!
//! PostgreSQL writes a marker document (its projection id) into the cluster once the design is applied
//! and everything is queued. A cluster without the marker has lost the projection — wiped, rebuilt,
//! replaced, or new — and is refilled: every row within retention is queued again, and the documents'
//! deterministic ids make the ones still there cost a duplicate and nothing else.

use std::time::SystemTime;

use serde_json::{Value, json};
use tracing::{info, warn};

use auscult_store::SearchKind;

use crate::{
    Cluster, ClusterError,
    design::{COMPONENT_TEMPLATES, KindLayout, MARKER_INDEX, month_expired, month_of_index},
    settings::Retention,
};

const MARKER_ID: &str = "marker";

/// Whether the cluster holds this database's projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    Present,
    /// No marker: the cluster never had the projection, or lost it.
    Missing,
    /// Another database's marker: two auscult installations share the cluster and would overwrite
    /// each other's documents.
    Foreign(String),
}

/// Applies the component and index templates (idempotent) with `replicas` replicas per shard, and
/// returns the names applied.
pub async fn apply_design(cluster: &Cluster, replicas: u32) -> Result<Vec<String>, ClusterError> {
    let mut applied = Vec::new();
    for (name, json) in COMPONENT_TEMPLATES {
        let mut template = parse_template(name, json)?;
        if name == "auscult-settings" {
            template["template"]["settings"]["index"]["number_of_replicas"] = json!(replicas);
        }
        cluster.put_component_template(name, &template).await?;
        applied.push(format!("component template {name}"));
    }
    for kind in SearchKind::ALL {
        let name = kind.alias();
        let template = parse_template(name, kind.index_template())?;
        cluster.put_index_template(name, &template).await?;
        applied.push(format!(
            "index template {name} ({name}-YYYY.MM, alias {name})"
        ));
        // A template shapes indices made after it; the months already made under an earlier
        // design get its new fields too, or their documents that carry them would be refused
        // (the mappings are strict) until the next month began.
        let mappings = &template["template"]["mappings"];
        for index in cluster.indices(&format!("{name}-*")).await? {
            match cluster.put_mapping(&index, mappings).await {
                Ok(()) => applied.push(format!("mappings of {index}")),
                // An index made otherwise (by hand, say) keeps its mappings: what it refuses is
                // dead-lettered with the reason, and the rest flows on.
                Err(error) => warn!(%index, %error, "index mappings left as they are"),
            }
        }
    }
    info!(templates = applied.len(), "index design applied");
    Ok(applied)
}

fn parse_template(name: &'static str, json: &str) -> Result<Value, ClusterError> {
    serde_json::from_str(json).map_err(|e| ClusterError::Decode {
        operation: name,
        detail: format!("shipped template is not JSON: {e}"),
    })
}

/// Reads the marker and compares it with `projection_id`.
pub async fn projection_state(
    cluster: &Cluster,
    projection_id: &str,
) -> Result<ProjectionState, ClusterError> {
    let Some(marker) = cluster.get_source(MARKER_INDEX, MARKER_ID).await? else {
        return Ok(ProjectionState::Missing);
    };
    match marker["projection_id"].as_str() {
        Some(id) if id == projection_id => Ok(ProjectionState::Present),
        Some(other) => Ok(ProjectionState::Foreign(other.to_owned())),
        None => Ok(ProjectionState::Missing),
    }
}

/// Writes the marker: from now on, the cluster holds (or is being refilled with) this projection.
pub async fn write_marker(cluster: &Cluster, projection_id: &str) -> Result<(), ClusterError> {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    cluster
        .put_document(
            MARKER_INDEX,
            MARKER_ID,
            &json!({"projection_id": projection_id, "written_at": now}),
        )
        .await
}

/// Deletes every monthly index whose whole month is past its kind's retention; returns their names.
pub async fn prune(
    cluster: &Cluster,
    retention: &Retention,
    now: SystemTime,
) -> Result<Vec<String>, ClusterError> {
    let mut deleted = Vec::new();
    for kind in SearchKind::ALL {
        for index in cluster.indices(&format!("{}-*", kind.alias())).await? {
            let Some((year, month)) = month_of_index(kind, &index) else {
                continue;
            };
            if month_expired(year, month, retention.of(kind), now) {
                cluster.delete_index(&index).await?;
                info!(%index, "index past retention deleted");
                deleted.push(index);
            }
        }
    }
    Ok(deleted)
}
