//! The `auscult` binary's argument handling.

use std::process::Command;

#[test]
fn simulate_names_a_missing_wav_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_auscult"))
        .args([
            "simulate",
            "--token",
            "t",
            "--device",
            "d",
            "--wav",
            "/nonexistent/clip.wav",
        ])
        .output()
        .expect("run auscult");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/clip.wav"), "{stderr}");
}

#[test]
fn simulate_rejects_a_negative_rate() {
    let output = Command::new(env!("CARGO_BIN_EXE_auscult"))
        .args(["simulate", "--token", "t", "--device", "d", "--rate=-1"])
        .output()
        .expect("run auscult");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate"));
}
