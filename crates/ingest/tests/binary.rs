//! The `auscult-ingest` binary refuses bad settings at start, naming the key.

use std::process::Command;

#[test]
fn a_bad_setting_stops_the_binary_with_its_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_auscult-ingest"))
        .env("AUSCULT__BATCH__WRITERS", "0")
        .output()
        .expect("run auscult-ingest");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("batch.writers"), "{stderr}");
}

#[test]
fn an_unknown_setting_is_an_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_auscult-ingest"))
        .env("AUSCULT__BATCH__MAX_FRAMEZ", "5")
        .output()
        .expect("run auscult-ingest");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_framez"), "{stderr}");
}
