//! The index design: what each kind of document is called in the cluster and the templates that
//! shape its indices. The templates live as JSON under `deploy/elasticsearch/`, for operators to read;
//! they are compiled in so that a binary always applies the design its documents were written for.
//!
//! Each kind is written to monthly indices named after the document's own event time
//! (`auscult-frames-2026.11`) and read through an alias (`auscult-frames`). The index follows from the
//! document, so a resent document lands where its first copy is and is recognised as a duplicate;
//! rollover (and data streams, which roll over) would move the write index and store a resend twice.
//! Retention deletes whole months.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use auscult_store::SearchKind;

/// Component templates shared by every kind: `(name, JSON)`.
pub const COMPONENT_TEMPLATES: [(&str, &str); 2] = [
    (
        "auscult-settings",
        include_str!("../../../deploy/elasticsearch/auscult-settings.component.json"),
    ),
    (
        "auscult-sensor",
        include_str!("../../../deploy/elasticsearch/auscult-sensor.component.json"),
    ),
];

/// The index holding this database's marker document (see [`crate::projection`]).
pub const MARKER_INDEX: &str = "auscult-projection";

/// How one kind of document is laid out in the cluster.
pub trait KindLayout {
    /// The alias every reader (Kibana, `auscult`) searches: `auscult-frames`.
    fn alias(self) -> &'static str;
    /// The index template's JSON.
    fn index_template(self) -> &'static str;
    /// The monthly index a document of `month` (`YYYY.MM`) goes to.
    fn index_for(self, month: &str) -> String;
}

impl KindLayout for SearchKind {
    fn alias(self) -> &'static str {
        match self {
            SearchKind::Frame => "auscult-frames",
            SearchKind::Result => "auscult-results",
            SearchKind::Alert => "auscult-alerts",
            SearchKind::Health => "auscult-health",
        }
    }

    fn index_template(self) -> &'static str {
        match self {
            SearchKind::Frame => {
                include_str!("../../../deploy/elasticsearch/auscult-frames.index.json")
            }
            SearchKind::Result => {
                include_str!("../../../deploy/elasticsearch/auscult-results.index.json")
            }
            SearchKind::Alert => {
                include_str!("../../../deploy/elasticsearch/auscult-alerts.index.json")
            }
            SearchKind::Health => {
                include_str!("../../../deploy/elasticsearch/auscult-health.index.json")
            }
        }
    }

    fn index_for(self, month: &str) -> String {
        format!("{}-{month}", self.alias())
    }
}

/// The month (`YYYY.MM`) an index name of `kind` covers, if it is one of ours.
pub fn month_of_index(kind: SearchKind, index: &str) -> Option<(i32, u32)> {
    let month = index.strip_prefix(kind.alias())?.strip_prefix('-')?;
    let (year, month) = month.split_once('.')?;
    if year.len() != 4 || month.len() != 2 {
        return None;
    }
    let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
    (1..=12).contains(&month).then_some((year, month))
}

/// Whether every document of the month `(year, month)` is older than `retention` at `now`.
pub fn month_expired(year: i32, month: u32, retention: Duration, now: SystemTime) -> bool {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let end = days_from_civil(next_year, next_month) * 86_400;
    let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return false;
    };
    (now.as_secs() as i64).saturating_sub(end) > retention.as_secs() as i64
}

/// Days since 1970-01-01 of the first day of `month` (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(year: i32, month: u32) -> i64 {
    let y = i64::from(if month <= 2 { year - 1 } else { year });
    let m = i64::from(month);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Every field path a kind's documents may carry (`top_bands.low_hz`), from its templates: what
/// dashboards may refer to and what the documents written must stay within.
pub fn fields_of(kind: SearchKind) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut sources: Vec<&str> = COMPONENT_TEMPLATES.iter().map(|(_, json)| *json).collect();
    sources.push(kind.index_template());
    for json in sources {
        let Ok(template) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        collect_fields(
            &template["template"]["mappings"]["properties"],
            "",
            &mut fields,
        );
    }
    fields
}

fn collect_fields(properties: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(properties) = properties.as_object() else {
        return;
    };
    for (name, mapping) in properties {
        let path = format!("{prefix}{name}");
        if mapping.get("properties").is_some() {
            collect_fields(&mapping["properties"], &format!("{path}."), out);
        } else {
            out.insert(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_round_trip_to_their_month() {
        let index = SearchKind::Frame.index_for("2026.11");
        assert_eq!(index, "auscult-frames-2026.11");
        assert_eq!(month_of_index(SearchKind::Frame, &index), Some((2026, 11)));
        assert_eq!(month_of_index(SearchKind::Result, &index), None);
        assert_eq!(
            month_of_index(SearchKind::Frame, "auscult-frames-2026.13"),
            None
        );
        assert_eq!(month_of_index(SearchKind::Frame, "auscult-frames"), None);
    }

    #[test]
    fn a_month_expires_only_once_all_of_it_is_past_retention() {
        let day = Duration::from_secs(86_400);
        // 2026-12-01T00:00:00Z is day 20788 since the epoch.
        assert_eq!(days_from_civil(2026, 12), 20_788);
        let dec_1 = SystemTime::UNIX_EPOCH + day * 20_788;
        assert!(!month_expired(2026, 11, day * 30, dec_1 + day * 30));
        assert!(month_expired(2026, 11, day * 30, dec_1 + day * 31));
        assert!(!month_expired(2026, 12, day, dec_1));
    }

    #[test]
    fn every_template_parses_and_names_the_shared_fields() {
        for (_, json) in COMPONENT_TEMPLATES {
            serde_json::from_str::<serde_json::Value>(json).expect("component template is JSON");
        }
        for kind in SearchKind::ALL {
            let fields = fields_of(kind);
            for shared in [
                "device_id",
                "sensor_id",
                "machine",
                "indexed_at",
                "index_lag_ms",
            ] {
                assert!(fields.contains(shared), "{kind:?} lacks {shared}");
            }
        }
        assert!(fields_of(SearchKind::Result).contains("top_bands.departure_db"));
    }
}
