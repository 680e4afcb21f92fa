//! `auscult model publish | list | activate` against a real PostgreSQL.

use std::path::PathBuf;

use auscult_e2e::{auscult, succeeded};
use auscult_testkit::PostgresServer;

#[test]
fn models_are_published_once_listed_and_activated() {
    let pg = PostgresServer::start().expect("postgres");
    let url = pg.url();
    succeeded(&auscult(&url, &["migrate"]));
    let shipped =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/shipped/auscult.model");
    let shipped = shipped.to_str().expect("utf-8 path");

    let published = succeeded(&auscult(&url, &["model", "publish", shipped, "--activate"]));
    assert!(published.starts_with("published "), "{published}");
    let again = succeeded(&auscult(&url, &["model", "publish", shipped]));
    assert!(
        again.contains("already published with the same contents"),
        "{again}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&succeeded(&auscult(&url, &["model", "list", "--json"])))
            .expect("json");
    let models = list.as_array().expect("array");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["active"], true);
    let version = models[0]["version"].as_str().expect("version");
    assert!(published.contains(version));
    let shipped = auscult_model::shipped::bytes().expect("a shipped model");
    let (info, _) = auscult_model::file::decode(shipped).expect("shipped model");
    assert_eq!(
        models[0]["summary"]["classes"].as_array().map(Vec::len),
        Some(info.classes.len()),
        "the listing shows the classes of the model it stores"
    );

    let unknown = auscult(&url, &["model", "activate", "no-such-version"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no model version \"no-such-version\"")
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.model");
    std::fs::write(&garbage, b"not a model at all").expect("write");
    let refused = auscult(
        &url,
        &["model", "publish", garbage.to_str().expect("utf-8")],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("garbage.model is not a usable model"),
        "{stderr}"
    );
}
