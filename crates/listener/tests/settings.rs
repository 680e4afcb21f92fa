//! The `auscult-listener` binary refuses settings that make no sense, naming the key, before it
//! touches the database; lists come from the environment comma-separated.

use std::process::Command;

fn listener(env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_auscult-listener"))
        .envs(env.iter().copied())
        .env(
            "AUSCULT__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .output()
        .expect("run auscult-listener");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_the_listener_with_the_key_named() {
    let (ok, stderr) = listener(&[("AUSCULT__ALERTS__FIRE_AT", "9")]);
    assert!(!ok);
    assert!(stderr.contains("alerts.fire_at"), "{stderr}");

    let (ok, stderr) = listener(&[
        ("AUSCULT__ALERTS__FIRE_AT", "40"),
        ("AUSCULT__ALERTS__WINDOW", "100000"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("alerts.window"), "{stderr}");

    // Two endpoints from one variable: the second is the bad one, so the list was split.
    let (ok, stderr) = listener(&[(
        "AUSCULT__ANALYSIS__ENDPOINTS",
        "http://127.0.0.1:50052,not a url",
    )]);
    assert!(!ok);
    assert!(stderr.contains("\"not a url\""), "{stderr}");

    let (ok, stderr) = listener(&[("AUSCULT__JOBS__LEASE", "ten minutes")]);
    assert!(!ok);
    assert!(stderr.contains("lease"), "{stderr}");

    // Elasticsearch nodes from one variable, the second one malformed.
    let (ok, stderr) = listener(&[("AUSCULT__ELASTIC__URLS", "http://127.0.0.1:9200,es-1:9200")]);
    assert!(!ok);
    assert!(
        stderr.contains("elastic.urls") && stderr.contains("es-1:9200"),
        "{stderr}"
    );

    let (ok, stderr) = listener(&[
        ("AUSCULT__ELASTIC__URLS", "http://127.0.0.1:9200"),
        ("AUSCULT__ELASTIC__BATCH_BYTES", "100"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("elastic.batch_bytes"), "{stderr}");
}
