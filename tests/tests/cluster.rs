//! The three-node cluster and its fault suite, as an operator runs them: `auscult cluster up` (network
//! namespaces, etcd, Patroni with synchronous replication, every service on every node, the search server
//! and the fault proxy), `auscult chaos --scenario … --json` while gateways stream, and `auscult cluster
//! down`. Needs root, `etcd`, `patroni`, `osmem-server` and `faketime` (`.ci/run` installs them).

use std::{path::Path, process::Command};

use auscult_testkit::workspace_binary;

/// Takes the cluster down (and its data away) however the test ends.
struct ClusterGuard<'a> {
    dir: &'a Path,
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(binary) = workspace_binary("auscult") {
            let _ = Command::new(binary)
                .args(["cluster", "down", "--remove-data", "--dir"])
                .arg(self.dir)
                .output();
        }
    }
}

fn auscult(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(workspace_binary("auscult").expect("auscult binary"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run auscult")
}

#[tokio::test]
async fn the_primary_dies_a_node_dies_a_node_is_cut_off_and_nothing_acknowledged_is_lost() {
    let scratch = tempfile::tempdir().expect("tempdir");
    // PostgreSQL runs as the postgres user, which must reach its data directory inside.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let dir = scratch.path().join("cluster");
    let dir_for_up = dir.clone();
    let _guard = ClusterGuard { dir: &dir };
    let up = tokio::task::spawn_blocking(move || auscult(&["cluster", "up"], &dir_for_up))
        .await
        .expect("join");
    assert!(
        up.status.success(),
        "cluster up failed: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    let status = auscult(&["cluster", "status", "--json"], &dir);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        for part in [
            "etcd", "patroni", "postgres", "ingest", "listener", "analysis",
        ] {
            assert_eq!(node[part], true, "{part} runs on every node: {status}");
        }
    }
    let roles: Vec<&str> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert!(roles.contains(&"leader"), "{status}");
    assert!(
        roles.contains(&"sync_standby"),
        "replication is synchronous: {status}"
    );

    let dir_for_chaos = dir.clone();
    let chaos = tokio::task::spawn_blocking(move || {
        auscult(
            &[
                "chaos",
                "--scenario",
                "primary-kill",
                "--scenario",
                "node-kill",
                "--scenario",
                "node-partition",
                "--scenario",
                "search-down",
                "--scenario",
                "link-blackhole",
                "--scenario",
                "clock-skew",
                "--scenario",
                "poison-frames",
                "--json",
            ],
            &dir_for_chaos,
        )
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&chaos.stderr);
    let report: serde_json::Value = serde_json::from_slice(&chaos.stdout)
        .unwrap_or_else(|e| panic!("chaos JSON ({e}): {stderr}"));
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 7, "{report}");
    for scenario in scenarios {
        let name = &scenario["name"];
        let figure = |key: &str| {
            scenario[key]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {key} is a number: {scenario}"))
        };
        assert_eq!(figure("lost_acked"), 0, "{name}: {scenario}\n{stderr}");
        assert_eq!(figure("duplicates_stored"), 0, "{name}: {scenario}");
        assert_eq!(figure("duplicate_results"), 0, "{name}: {scenario}");
        assert_eq!(
            figure("indexed"),
            figure("persisted"),
            "{name}: Elasticsearch holds every stored frame: {scenario}"
        );
        if name == "poison-frames" {
            // The invalid hostile frames were refused, the one-sample ones dead at once, the rest scored.
            assert!(figure("acked") < figure("generated"), "{name}: {scenario}");
            assert!(figure("dead_lettered") > 0, "{name}: {scenario}");
            assert_eq!(
                figure("scored") + figure("dead_lettered"),
                figure("persisted"),
                "{name}: {scenario}"
            );
        } else {
            assert_eq!(figure("dead_lettered"), 0, "{name}: {scenario}");
            assert_eq!(
                figure("acked"),
                figure("generated"),
                "{name}: every frame acknowledged in the end: {scenario}"
            );
            assert_eq!(
                figure("scored"),
                figure("persisted"),
                "{name}: every stored frame scored: {scenario}"
            );
        }
        let recovery = scenario["recovery_s"].as_f64().expect("recovery measured");
        assert!(
            recovery > 0.0 && recovery < 60.0,
            "{name}: acknowledgements flowed again after {recovery} s"
        );
        assert_eq!(scenario["passed"], true, "{name}: {scenario}\n{stderr}");
        println!("{scenario}");
    }
    assert!(chaos.status.success(), "{stderr}");
}
