//! The deploy files — the image, docker-compose.yml and the Helm chart — checked statically by
//! `deploy/check` (no Docker engine or cluster runs here), with the settings they pass run through the
//! real service binaries. The checkers come from `bash deploy/tools/install`.

use std::{path::PathBuf, process::Command};

use auscult_testkit::workspace_binary;

#[test]
fn deploy_files_pass_every_check() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = workspace_binary("auscult-ingest")
        .expect("auscult-ingest binary")
        .parent()
        .expect("binary folder")
        .to_path_buf();
    let output = Command::new("bash")
        .arg(repo.join("deploy/check"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .current_dir(&repo)
        .output()
        .expect("run deploy/check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "deploy/check failed:\n{report}");
    // Every part ran: a check that was skipped would not print its PASS line.
    for part in ["image:", "compose:", "scripts:", "chart:", "settings:"] {
        assert!(
            report.contains(&format!("PASS {part}")),
            "{part} did not run:\n{report}"
        );
    }
}
