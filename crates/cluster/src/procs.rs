//! The processes of a node: started inside its network namespace, detached from the caller (a cluster
//! outlives the `auscult cluster up` that started it), found again by namespace, killed by signal.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::ClusterError;

/// A process found in a node's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProcess {
    pub pid: u32,
    /// The program's name as the kernel reports it (`postgres`, `auscult-ingest`, …; at most 15 bytes).
    pub comm: String,
    pub uid: u32,
    /// The full command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Children this process started, kept so that the ones that die are reaped (a long `auscult chaos` run
/// kills and restarts many) without waiting on anyone else's.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Starts `program ARGS…` in `namespace` (as `user` when given), its output appended to `log`; returns its
/// pid without waiting for it.
pub(crate) fn spawn_in(
    namespace: &str,
    user: Option<&str>,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<u32, ClusterError> {
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ClusterError::Io(format!("opening {}: {e}", log.display())))?;
    let errors = output
        .try_clone()
        .map_err(|e| ClusterError::Io(format!("opening {}: {e}", log.display())))?;
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]);
    if let Some(user) = user {
        // setpriv replaces itself with the program (no extra process), so signals reach it directly.
        command.args(["setpriv", "--reuid", user, "--regid", user, "--init-groups"]);
    }
    command
        .arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The caller's directory may be closed to the postgres user (a private temporary checkout);
        // PostgreSQL cannot start from a directory it cannot enter.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        // Its own process group: a terminal's Ctrl-C on the caller does not reach the cluster.
        .process_group(0);
    let child = command.spawn().map_err(|e| {
        ClusterError::Command(format!(
            "starting {} in {namespace}: {e}",
            program.display()
        ))
    })?;
    let pid = child.id();
    if let Ok(mut children) = CHILDREN.lock() {
        children.push(child);
    }
    Ok(pid)
}

/// Reaps the children that exited, so that they stop showing as processes of their namespace.
pub(crate) fn reap() {
    if let Ok(mut children) = CHILDREN.lock() {
        children.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
    }
}

/// The live processes of `namespace` (zombies left out).
pub fn processes_in(namespace: &str) -> Result<Vec<NodeProcess>, ClusterError> {
    reap();
    let output = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
        .map_err(|e| ClusterError::Command(format!("ip netns pids {namespace}: {e}")))?;
    if !output.status.success() {
        return Err(ClusterError::Command(format!(
            "ip netns pids {namespace}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut found = Vec::new();
    for pid in String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let Ok(status) = std::fs::read_to_string(proc_dir.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        if field("State:").starts_with('Z') {
            continue;
        }
        let uid = field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX);
        let cmdline = std::fs::read(proc_dir.join("cmdline"))
            .map(|bytes| {
                bytes
                    .split(|b| *b == 0)
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        found.push(NodeProcess {
            pid,
            comm: field("Name:"),
            uid,
            cmdline,
        });
    }
    Ok(found)
}

/// Sends `signal` to each of `pids`; processes already gone are not an error.
pub(crate) fn signal_all(pids: &[u32], signal: Signal) {
    for pid in pids {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
}
