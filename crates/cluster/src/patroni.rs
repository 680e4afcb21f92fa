//! PostgreSQL under Patroni, with a three-member etcd as its consensus store: configuration files and
//! what the REST API says about a member.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use serde::Deserialize;

/// With `synchronous_mode_strict`, a COMMIT is never acknowledged on the primary alone: when no standby can
/// confirm it, writes wait (the non-strict mode would switch to asynchronous replication, and a later
/// failover would discard what only the old primary had).
///
/// Patroni's loop: a leader whose key is not renewed for `TTL_S` loses it, and a synchronous standby is
/// promoted within about that time (`loop_wait + 2 × retry_timeout ≤ ttl`, as Patroni requires).
/// Patroni 4 raises a TTL below 20 s to 20 s.
const TTL_S: u32 = 20;
const LOOP_WAIT_S: u32 = 1;
const RETRY_TIMEOUT_S: u32 = 5;

/// The YAML configuration of member `name` (at `ip`) of a cluster whose members are `members`.
pub(crate) fn config(
    name: &str,
    ip: Ipv4Addr,
    members: &[Ipv4Addr],
    subnet_cidr: &str,
    node_dir: &Path,
    bin_dir: &Path,
    synchronous: bool,
) -> String {
    let etcd_hosts: Vec<String> = members.iter().map(|m| format!("{m}:2379")).collect();
    let data_dir = node_dir.join("pgdata");
    let socket_dir = node_dir.join("socket");
    let pgpass = node_dir.join("pgpass");
    format!(
        r"scope: auscult
namespace: /auscult/
name: {name}
log:
  level: INFO
restapi:
  listen: {ip}:8008
  connect_address: {ip}:8008
etcd3:
  hosts: {hosts}
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: {LOOP_WAIT_S}
    retry_timeout: {RETRY_TIMEOUT_S}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous}
    synchronous_mode_strict: {synchronous}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        shared_buffers: 64MB
        fsync: 'on'
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator {subnet_cidr} trust
    - host all all {subnet_cidr} trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: {ip}:5432
  connect_address: {ip}:5432
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  pgpass: {pgpass}
  authentication:
    replication:
      username: replicator
      password: replicator
    superuser:
      username: postgres
      password: postgres
    rewind:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: '{socket_dir}'
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
",
        hosts = etcd_hosts.join(","),
        data_dir = data_dir.display(),
        bin_dir = bin_dir.display(),
        pgpass = pgpass.display(),
        socket_dir = socket_dir.display(),
    )
}

/// One member as `GET /cluster` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Member {
    pub name: String,
    /// `leader`, `sync_standby`, `replica`, …
    pub role: String,
    /// `running`, `streaming`, `starting`, …
    pub state: String,
    #[serde(default)]
    pub lag: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ClusterView {
    members: Vec<Member>,
}

/// The members as the first of `apis` that answers sees them; empty when none answers.
pub(crate) async fn members(client: &reqwest::Client, apis: &[String]) -> Vec<Member> {
    for api in apis {
        let Ok(response) = client
            .get(format!("{api}/cluster"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
        else {
            continue;
        };
        if let Ok(view) = response.json::<ClusterView>().await {
            return view.members;
        }
    }
    Vec::new()
}
