//! What installers run — `auscult setup`, `migrate --check`, `model publish --shipped
//! --activate-if-none`, `auscult health`, `device add --token-file` — and a gateway given several
//! ingest addresses, against a real PostgreSQL and the real binaries.

use std::{path::Path, process::Output, time::Duration};

use auscult_e2e::{Stack, auscult, start_listener, start_postgres, succeeded};
use auscult_testkit::{ServiceProcess, free_port, wait_grpc_serving};

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "auscult should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn models(url: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&succeeded(&auscult(url, &["model", "list", "--json"])))
            .expect("json");
    list.as_array().expect("array").clone()
}

#[tokio::test]
async fn setup_prepares_a_fresh_database_and_analysis_reports_serving() {
    let pg = start_postgres().await;
    let url = pg.url();

    // What a service's init container waits on: nothing is migrated yet.
    let behind = failed(&auscult(
        &url,
        &["migrate", "--check", "--wait-for-database", "0s"],
    ));
    assert!(behind.contains("run `auscult migrate`"), "{behind}");

    // Analysis runs but has no model to serve: the probe says so and fails.
    let grpc_port = free_port().expect("port");
    let analysis = ServiceProcess::spawn(
        "auscult-analysis",
        &[],
        [
            ("AUSCULT__DATABASE__URL", url.clone()),
            ("AUSCULT__LISTEN_ADDR", format!("127.0.0.1:{grpc_port}")),
            (
                "AUSCULT__ADMIN_ADDR",
                format!("127.0.0.1:{}", free_port().expect("port")),
            ),
            ("AUSCULT__SCORING__WORKERS", "1".into()),
            ("AUSCULT__MODEL__POLL_INTERVAL", "200ms".into()),
        ],
    )
    .expect("start auscult-analysis");
    let address = format!("http://127.0.0.1:{grpc_port}");
    let endpoint = tonic::transport::Endpoint::from_shared(address.clone()).expect("endpoint");
    assert!(
        wait_grpc_serving(&endpoint, "", Duration::from_secs(60)).await,
        "analysis did not start:\n{}",
        analysis.log()
    );
    let not_serving = failed(&auscult(
        &url,
        &[
            "health",
            &address,
            "--service",
            "auscult.analysis.v1.Analysis",
        ],
    ));
    assert!(not_serving.contains("NOT_SERVING"), "{not_serving}");

    let setup = succeeded(&auscult(&url, &["setup", "--wait-for-database", "30s"]));
    assert!(setup.contains("setup complete"), "{setup}");
    let check = succeeded(&auscult(
        &url,
        &["migrate", "--check", "--wait-for-database", "0s"],
    ));
    assert!(
        check.contains(&format!(
            "schema is at version {}",
            auscult_store::LATEST_VERSION
        )),
        "{check}"
    );
    let published = models(&url);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0]["active"], true);

    // The registry's activation reaches analysis, and the probe passes.
    assert!(
        wait_grpc_serving(
            &endpoint,
            "auscult.analysis.v1.Analysis",
            Duration::from_secs(60)
        )
        .await,
        "analysis did not serve the activated model:\n{}",
        analysis.log()
    );
    let serving = succeeded(&auscult(
        &url,
        &[
            "health",
            &address,
            "--service",
            "auscult.analysis.v1.Analysis",
        ],
    ));
    assert!(serving.contains("is SERVING"), "{serving}");
}

#[tokio::test]
async fn setup_run_again_never_undoes_an_operators_model_choice() {
    let pg = start_postgres().await;
    let url = pg.url();
    succeeded(&auscult(&url, &["setup", "--wait-for-database", "30s"]));
    let shipped = models(&url)[0]["version"]
        .as_str()
        .expect("version")
        .to_owned();

    // An operator publishes and activates another version (same bytes under another name will do).
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO models (version, sha256, file, summary)
             SELECT 'operator-choice', sha256, file, summary FROM models WHERE version = $1",
            &[&shipped],
        )
        .await
        .expect("second version");
    succeeded(&auscult(&url, &["model", "activate", "operator-choice"]));

    // An upgrade runs setup again.
    let again = succeeded(&auscult(&url, &["setup"]));
    assert!(again.contains("left operator-choice active"), "{again}");
    let active: Vec<_> = models(&url)
        .into_iter()
        .filter(|m| m["active"] == true)
        .map(|m| m["version"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(active, ["operator-choice"]);

    // --activate still switches on purpose.
    succeeded(&auscult(
        &url,
        &["model", "publish", "--shipped", "--activate"],
    ));
    let active: Vec<_> = models(&url)
        .into_iter()
        .filter(|m| m["active"] == true)
        .map(|m| m["version"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(active, [shipped]);
}

#[test]
fn commands_that_wait_for_the_database_give_up_at_their_deadline() {
    let port = free_port().expect("port");
    let url = format!("postgres://postgres@127.0.0.1:{port}/auscult");
    let started = std::time::Instant::now();
    let gave_up = failed(&auscult(&url, &["migrate", "--wait-for-database", "1s"]));
    assert!(gave_up.contains("was not reachable within 1s"), "{gave_up}");
    assert!(gave_up.contains("waiting for PostgreSQL"), "{gave_up}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn the_health_probe_fails_when_nothing_answers() {
    let port = free_port().expect("port");
    let refused = failed(&auscult(
        "postgres://unused",
        &[
            "health",
            &format!("http://127.0.0.1:{port}"),
            "--timeout",
            "2s",
        ],
    ));
    assert!(refused.contains(&format!("127.0.0.1:{port}")), "{refused}");
}

#[tokio::test]
async fn a_gateway_given_several_ingest_addresses_moves_past_one_that_is_down() {
    let stack = Stack::start(&[]).await;
    let url = stack.postgres.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let token_path = token_file.to_str().expect("utf-8 path");
    succeeded(&auscult(
        &url,
        &["device", "add", "gw-multi", "--token-file", token_path],
    ));
    assert_private(&token_file);
    // Running it again fails unless told the device may exist; then it issues another token.
    let exists = failed(&auscult(
        &url,
        &["device", "add", "gw-multi", "--token-file", token_path],
    ));
    assert!(exists.contains("already exists"), "{exists}");
    succeeded(&auscult(
        &url,
        &[
            "device",
            "add",
            "gw-multi",
            "--exists-ok",
            "--token-file",
            token_path,
        ],
    ));

    // The first address has nothing behind it.
    let down = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let endpoints = format!("{down},{}", stack.endpoint());
    let output = auscult(
        &url,
        &[
            "simulate",
            "--endpoint",
            &endpoints,
            "--device",
            "gw-multi",
            "--token-file",
            token_path,
            "--sensors",
            "2",
            "--frames",
            "20",
            "--rate",
            "0",
            "--give-up-after",
            "30",
            "--json",
        ],
    );
    let summary: serde_json::Value =
        serde_json::from_str(&succeeded(&output)).expect("json summary");
    assert_eq!(summary["sent"], 40, "{summary}");
    assert_eq!(summary["acked"], 40, "{summary}");
    let stored: i64 = stack
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM frames WHERE device_id = 'gw-multi'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 40);
}

#[tokio::test]
async fn the_listener_reports_readiness_under_its_own_health_service() {
    let stack = Stack::start(&[]).await;
    let grpc_port = free_port().expect("port");
    let listen_addr = format!("127.0.0.1:{grpc_port}");
    let listener = start_listener(
        &stack.postgres.url(),
        "probed",
        &["http://127.0.0.1:1".to_owned()],
        &[("AUSCULT__LISTEN_ADDR", listen_addr.as_str())],
    );
    let address = format!("http://{listen_addr}");
    let endpoint = tonic::transport::Endpoint::from_shared(address.clone()).expect("endpoint");
    assert!(
        wait_grpc_serving(
            &endpoint,
            auscult_listener::HEALTH_SERVICE,
            Duration::from_secs(30)
        )
        .await,
        "listener never reported ready:\n{}",
        listener.log()
    );
    let probe = succeeded(&auscult(
        "postgres://unused",
        &[
            "health",
            &address,
            "--service",
            auscult_listener::HEALTH_SERVICE,
        ],
    ));
    assert!(probe.contains("is SERVING"), "{probe}");
}

#[cfg(unix)]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "token file readable by others: {mode:o}");
}

#[cfg(not(unix))]
fn assert_private(_path: &Path) {}
