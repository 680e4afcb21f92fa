//! Credentials never reach a log: the database password, the Elasticsearch password and device
//! tokens stay out of every service's output, at debug level, through a database outage and a
//! search cluster that cannot be reached, and out of `--check-config`.

use std::time::Duration;

use auscult_e2e::{
    AnalysisProcess, activate_shipped_model, connect, expect_logged, scoring_progress,
    spawn_ingest, start_listener, start_postgres, wait_ingest_serving,
};
use auscult_testkit::{free_port, wait_for, workspace_binary};

const DATABASE_PASSWORD: &str = "db-pw-5d1c0e-must-not-leak";
const ELASTIC_PASSWORD: &str = "es-pw-93b2aa-must-not-leak";

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows a credential:\n{text}");
    }
}

#[tokio::test]
async fn no_credential_reaches_a_log() {
    let postgres = start_postgres().await;
    let mut db = connect(&postgres.url()).await;
    auscult_store::migrate(&mut db).await.expect("migrate");
    activate_shipped_model(&mut db).await;
    let token = auscult_store::add_device(&mut db, "gw-1", "test")
        .await
        .expect("device");
    // The test server trusts local connections, so the password is carried but never checked:
    // what matters here is where it travels.
    let url = postgres
        .url()
        .replace("postgres@", &format!("postgres:{DATABASE_PASSWORD}@"));
    let debug = [("RUST_LOG".to_owned(), "debug".to_owned())];

    let (grpc_port, admin_port) = (free_port().expect("port"), free_port().expect("port"));
    let ingest = spawn_ingest(&url, grpc_port, admin_port, &debug);
    wait_ingest_serving(&ingest, grpc_port).await;
    let analysis = AnalysisProcess::start(&url).await;
    let listener = start_listener(
        &url,
        "listener",
        &[analysis.endpoint()],
        &[
            ("RUST_LOG", "debug"),
            ("AUSCULT__ELASTIC__URLS", "http://127.0.0.1:9"),
            ("AUSCULT__ELASTIC__USERNAME", "elastic"),
            ("AUSCULT__ELASTIC__PASSWORD", ELASTIC_PASSWORD),
            ("AUSCULT__ELASTIC__RETRY_MIN", "50ms"),
        ],
    );

    let simulate = std::process::Command::new(workspace_binary("auscult").expect("auscult"))
        .args([
            "simulate",
            "--endpoint",
            &format!("http://127.0.0.1:{grpc_port}"),
            "--device",
            "gw-1",
            "--sensors",
            "1",
            "--frames",
            "5",
            "--rate",
            "0",
        ])
        .env("AUSCULT_TOKEN", &token)
        .env("RUST_LOG", "debug")
        .output()
        .expect("simulate");
    assert!(simulate.status.success(), "{simulate:?}");
    let scored = wait_for(Duration::from_secs(60), || async {
        (scoring_progress(&db).await.0 == 5).then_some(())
    })
    .await;
    assert!(scored.is_some(), "frames not scored:\n{}", listener.log());
    // The search cluster cannot be reached: the listener says so, without its password.
    expect_logged(
        &listener,
        "indexing round failed",
        "the unreachable cluster is reported",
    )
    .await;

    // The database goes away: ingest and the listener report it.
    let before = [ingest.log().len(), listener.log().len()];
    postgres.stop_immediately();
    for ((process, name), before) in [(&ingest, "ingest"), (&listener, "listener")]
        .into_iter()
        .zip(before)
    {
        let reported = wait_for(Duration::from_secs(30), || {
            let log = process.log();
            let since = log.get(before..).unwrap_or_default().to_lowercase();
            async move { (since.contains("error") || since.contains("closed")).then_some(()) }
        })
        .await;
        assert!(
            reported.is_some(),
            "{name} never reported the outage:\n{}",
            process.log()
        );
    }

    let secrets = [DATABASE_PASSWORD, ELASTIC_PASSWORD, token.as_str()];
    let gateway_output = format!(
        "{}{}",
        String::from_utf8_lossy(&simulate.stdout),
        String::from_utf8_lossy(&simulate.stderr)
    );
    assert_no_secret("the gateway's output", &gateway_output, &secrets);
    assert_no_secret("ingest's log", &ingest.log(), &secrets);
    assert_no_secret("the listener's log", &listener.log(), &secrets);
    assert_no_secret("analysis's log", &analysis.process.log(), &secrets);

    // --check-config, with a setting that is wrong, names the key and not the secrets.
    for binary in ["auscult-ingest", "auscult-listener", "auscult-analysis"] {
        let mut command = std::process::Command::new(workspace_binary(binary).expect("binary"));
        command
            .arg("--check-config")
            .env("AUSCULT__DATABASE__URL", &url)
            .env("AUSCULT__DATABASE__POOL_SIZE", "0");
        if binary == "auscult-listener" {
            command
                .env("AUSCULT__ELASTIC__URLS", "http://127.0.0.1:9")
                .env("AUSCULT__ELASTIC__USERNAME", "elastic")
                .env("AUSCULT__ELASTIC__PASSWORD", ELASTIC_PASSWORD);
        }
        let output = command.output().expect("check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "{binary} accepted pool_size 0: {text}"
        );
        assert!(text.contains("pool_size"), "{binary} names the key: {text}");
        assert_no_secret(&format!("{binary} --check-config"), &text, &secrets);
    }
}
