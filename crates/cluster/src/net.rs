//! The network: one Linux bridge in the host's namespace and one network namespace per node, joined to it
//! by a veth pair. Cutting a node off is taking its veth down; nothing else changes.

use std::process::Command;

use crate::ClusterError;

/// Runs `ip ARGS…`; an error names the command and what `ip` said.
pub(crate) fn ip(args: &[&str]) -> Result<(), ClusterError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ClusterError::Command(format!("ip {}: {e}", args.join(" "))))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Command(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Whether network namespace `name` exists.
pub(crate) fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Whether link `name` exists in the host's namespace.
pub(crate) fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether link `name` (in the host's namespace) is administratively up.
pub(crate) fn link_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

/// Creates the bridge with `gateway_cidr` (e.g. `10.77.0.1/24`).
pub(crate) fn create_bridge(bridge: &str, gateway_cidr: &str) -> Result<(), ClusterError> {
    if !link_exists(bridge) {
        ip(&["link", "add", bridge, "type", "bridge"])?;
        ip(&["addr", "add", gateway_cidr, "dev", bridge])?;
    }
    ip(&["link", "set", bridge, "up"])
}

/// Creates namespace `namespace` with address `cidr` on its `eth0`, whose peer `veth` is on `bridge`.
pub(crate) fn create_node(
    bridge: &str,
    namespace: &str,
    veth: &str,
    cidr: &str,
) -> Result<(), ClusterError> {
    if !namespace_exists(namespace) {
        ip(&["netns", "add", namespace])?;
    }
    if !link_exists(veth) {
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace,
        ])?;
        ip(&["-n", namespace, "addr", "add", cidr, "dev", "eth0"])?;
    }
    ip(&["link", "set", veth, "master", bridge])?;
    ip(&["link", "set", veth, "up"])?;
    ip(&["-n", namespace, "link", "set", "eth0", "up"])?;
    ip(&["-n", namespace, "link", "set", "lo", "up"])
}

/// Removes what [`create_node`] and [`create_bridge`] made; missing pieces are not an error.
pub(crate) fn remove(bridge: &str, nodes: &[(String, String)]) {
    for (namespace, veth) in nodes {
        if link_exists(veth) {
            let _ = ip(&["link", "del", veth]);
        }
        if namespace_exists(namespace) {
            let _ = ip(&["netns", "del", namespace]);
        }
    }
    if link_exists(bridge) {
        let _ = ip(&["link", "del", bridge]);
    }
}
