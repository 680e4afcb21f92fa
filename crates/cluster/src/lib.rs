//! A three-node auscult cluster on one machine, for proving what survives a node's death.
//!
//! Each node is a Linux network namespace joined to a bridge, running one etcd member, one PostgreSQL
//! managed by Patroni (synchronous replication, automatic failover), and one replica of each service:
//! ingest, listener, analysis. The services reach the primary through a multi-host connection string with
//! `target_session_attrs=read-write`, as in the deployments; gateways are given every ingest address. The
//! faults a plant's cluster meets are methods here: a node killed (every process of its namespace, SIGKILL)
//! and restarted, its database killed, its network cut off and healed.
//!
//! A fourth namespace, `links`, holds what is not a node: the Elasticsearch-API server the listeners index
//! into (`osmem-server`) and the fault proxy ([`links`]) that the links between the parts run through —
//! listeners to each analysis replica, listeners to the search server and, for the gateways that want it,
//! gateways to each ingest replica — so a link can be slowed, stalled or reset on its own.
//!
//! Needs root (namespaces, the bridge), the PostgreSQL server binaries, `etcd` and `patroni` (Debian:
//! `apt install postgresql etcd-server patroni`), and the service binaries beside the running one.

pub mod links;
mod net;
mod patroni;
mod procs;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use links::{Faults, LinkFault};
pub use nix::sys::signal::Signal;
pub use patroni::Member;
pub use procs::{NodeProcess, processes_in};

/// What can go wrong running the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Command(String),
    #[error("{0}")]
    Io(String),
    #[error("{what} not ready within {waited:?}: {detail}")]
    NotReady {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("{0} is missing: {1}")]
    Missing(String, String),
    #[error("database: {0}")]
    Database(String),
    #[error("no cluster in {0}: start one with `auscult cluster up`")]
    NoCluster(String),
}

/// The gRPC and admin ports every node's services listen on (each node has its own address).
pub const INGEST_PORT: u16 = 50051;
pub const ANALYSIS_PORT: u16 = 50052;
pub const LISTENER_PORT: u16 = 50053;
pub const INGEST_ADMIN_PORT: u16 = 9464;
pub const ANALYSIS_ADMIN_PORT: u16 = 9465;
pub const LISTENER_ADMIN_PORT: u16 = 9466;
/// On the links namespace: the search server's own port, and the proxied one the listeners use.
pub const SEARCH_SERVER_PORT: u16 = 9201;
pub const SEARCH_PORT: u16 = 9200;
/// On the links namespace: node i's ingest is proxied on `INGEST_LINK_PORT + i`, its analysis on
/// `ANALYSIS_LINK_PORT + i`.
pub const INGEST_LINK_PORT: u16 = 51050;
pub const ANALYSIS_LINK_PORT: u16 = 52050;

/// How the cluster is laid out; saved in its directory so that later commands find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterPlan {
    /// Where data, configuration and logs live (`<dir>/n1/…`).
    pub dir: PathBuf,
    /// The first three octets of the /24 the nodes live on: the bridge is `.1`, node i is `.10+i`.
    pub subnet: [u8; 3],
    /// Synchronous replication (Patroni's `synchronous_mode`): an acknowledged frame is on two nodes.
    pub synchronous: bool,
    /// Extra `AUSCULT__…` settings for every service.
    #[serde(default)]
    pub service_env: Vec<(String, String)>,
}

impl ClusterPlan {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            subnet: [10, 77, 0],
            synchronous: true,
            service_env: Vec::new(),
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `n1`, `n2`, `n3`.
    pub name: String,
    pub namespace: String,
    /// The host side of its veth pair: taking it down cuts the node off.
    pub veth: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
}

impl Node {
    pub fn ingest_endpoint(&self) -> String {
        format!("http://{}:{INGEST_PORT}", self.ip)
    }

    pub fn analysis_endpoint(&self) -> String {
        format!("http://{}:{ANALYSIS_PORT}", self.ip)
    }

    pub fn patroni_api(&self) -> String {
        format!("http://{}:8008", self.ip)
    }

    fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }
}

/// The three nodes, their network and their processes.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub plan: ClusterPlan,
    pub nodes: Vec<Node>,
    /// The namespace of the search server and the fault proxy.
    pub links: Node,
    bridge: String,
    http: reqwest::Client,
}

/// The number of nodes: three, the smallest cluster that survives losing one.
pub const NODES: usize = 3;

/// The file in the cluster's directory that records its plan.
const PLAN_FILE: &str = "cluster.json";

impl Cluster {
    pub fn new(plan: ClusterPlan) -> Self {
        let [a, b, c] = plan.subnet;
        let nodes = (1..=NODES)
            .map(|i| {
                let name = format!("n{i}");
                Node {
                    namespace: format!("auscult-{name}"),
                    veth: format!("auscult-{name}"),
                    ip: Ipv4Addr::new(a, b, c, 10 + u8::try_from(i).unwrap_or(0)),
                    dir: plan.dir.join(&name),
                    name,
                }
            })
            .collect();
        let links = Node {
            name: "links".into(),
            namespace: "auscult-links".into(),
            veth: "auscult-links".into(),
            ip: Ipv4Addr::new(a, b, c, 20),
            dir: plan.dir.join("links"),
        };
        Self {
            nodes,
            links,
            bridge: "auscult0".into(),
            http: reqwest::Client::new(),
            plan,
        }
    }

    /// The cluster whose plan is saved in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(dir.join(PLAN_FILE))
            .map_err(|_| ClusterError::NoCluster(dir.display().to_string()))?;
        let plan: ClusterPlan = serde_json::from_str(&text)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", dir.join(PLAN_FILE).display())))?;
        Ok(Self::new(plan))
    }

    fn subnet_cidr(&self) -> String {
        let [a, b, c] = self.plan.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The connection string every service uses: all three nodes, the writable one chosen.
    pub fn database_url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:5432", n.ip))
            .collect();
        format!(
            "postgres://postgres@{}/auscult?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        )
    }

    pub fn ingest_endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::ingest_endpoint).collect()
    }

    /// The ingest replicas as reached through the `ingest` links, whose faults the suite controls.
    pub fn ingest_link_endpoints(&self) -> Vec<String> {
        (1..=NODES)
            .map(|i| {
                format!(
                    "http://{}:{}",
                    self.links.ip,
                    link_port(INGEST_LINK_PORT, i)
                )
            })
            .collect()
    }

    /// The Elasticsearch-API server, as the listeners reach it (through the `search` link).
    pub fn search_url(&self) -> String {
        format!("http://{}:{SEARCH_PORT}", self.links.ip)
    }

    /// Every proxied link: the listeners' routes to analysis and search, the gateways' to ingest.
    pub fn link_table(&self) -> Vec<links::Link> {
        let at = |ip: Ipv4Addr, port: u16| std::net::SocketAddr::from((ip, port));
        let mut table = vec![links::Link {
            group: "search".into(),
            listen: at(self.links.ip, SEARCH_PORT),
            upstream: at(self.links.ip, SEARCH_SERVER_PORT),
            http: true,
        }];
        for (i, node) in self.nodes.iter().enumerate() {
            for (group, base, port) in [
                ("ingest", INGEST_LINK_PORT, INGEST_PORT),
                ("analysis", ANALYSIS_LINK_PORT, ANALYSIS_PORT),
            ] {
                table.push(links::Link {
                    group: group.into(),
                    listen: at(self.links.ip, link_port(base, i + 1)),
                    upstream: at(node.ip, port),
                    http: false,
                });
            }
        }
        table
    }

    /// The file the fault proxy rereads.
    pub fn faults_file(&self) -> PathBuf {
        self.plan.dir.join("faults.json")
    }

    /// Puts `fault` on every link of `group` (`ingest`, `analysis`, `search`); `LinkFault::Pass` lifts it.
    pub fn set_link_fault(&self, group: &str, fault: LinkFault) -> Result<(), ClusterError> {
        let path = self.faults_file();
        let mut faults = links::read_faults(&path)?;
        faults.insert(group.to_owned(), fault);
        links::write_faults(&path, &faults)
    }

    /// Runs the fault proxy for this cluster's links, until killed (`auscult cluster links`).
    pub async fn run_links(&self) -> Result<(), ClusterError> {
        links::run(self.link_table(), self.faults_file()).await
    }

    /// SIGKILLs the search server: everything it held is gone (it keeps its data in memory).
    pub fn kill_search(&self) -> Result<(), ClusterError> {
        let pids: Vec<u32> = processes_in(&self.links.namespace)?
            .iter()
            .filter(|p| p.comm.starts_with("osmem"))
            .map(|p| p.pid)
            .collect();
        procs::signal_all(&pids, Signal::SIGKILL);
        Ok(())
    }

    /// Starts the search server and the fault proxy where they are not running, and waits until the
    /// search server answers through its link.
    pub async fn start_links(&self) -> Result<(), ClusterError> {
        let processes = processes_in(&self.links.namespace)?;
        if !processes.iter().any(|p| p.comm.starts_with("osmem")) {
            let server = auscult_testkit::search::osmem_binary()
                .map_err(|e| ClusterError::Missing("osmem-server".into(), e.to_string()))?;
            procs::spawn_in(
                &self.links.namespace,
                None,
                &server,
                &[
                    "-addr".into(),
                    format!("{}:{SEARCH_SERVER_PORT}", self.links.ip),
                    "-no-stdin-watch".into(),
                ],
                &[],
                &self.links.log("search"),
            )?;
        }
        if !processes
            .iter()
            .any(|p| p.cmdline.contains("cluster links"))
        {
            let auscult = auscult_testkit::workspace_binary("auscult")
                .map_err(|e| ClusterError::Missing("auscult".into(), e.to_string()))?;
            procs::spawn_in(
                &self.links.namespace,
                None,
                &auscult,
                &[
                    "cluster".into(),
                    "links".into(),
                    "--dir".into(),
                    self.plan.dir.display().to_string(),
                ],
                &[],
                &self.links.log("links"),
            )?;
        }
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(response) = self
                .http
                .get(self.search_url())
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClusterError::NotReady {
            what: "the search server behind its link".into(),
            waited: timeout,
            detail: self.log_tail_of(&self.links, "search", 8)
                + &self.log_tail_of(&self.links, "links", 8),
        })
    }

    /// Builds the network, starts etcd and Patroni on every node, waits for a primary with its standbys,
    /// prepares the database (migrated, the shipped model active) and starts the services.
    pub async fn up(&self, say: impl Fn(&str)) -> Result<(), ClusterError> {
        for tool in ["etcd", "setpriv"] {
            which(tool)?;
        }
        patroni_program()?;
        let pg_bin = postgres_bin_dir()?;
        std::fs::create_dir_all(&self.plan.dir)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", self.plan.dir.display())))?;
        std::fs::write(
            self.plan.dir.join(PLAN_FILE),
            serde_json::to_string_pretty(&self.plan).unwrap_or_default(),
        )
        .map_err(|e| ClusterError::Io(format!("writing the plan: {e}")))?;

        let [a, b, c] = self.plan.subnet;
        net::create_bridge(&self.bridge, &format!("{a}.{b}.{c}.1/24"))?;
        for node in &self.nodes {
            net::create_node(
                &self.bridge,
                &node.namespace,
                &node.veth,
                &format!("{}/24", node.ip),
            )?;
            prepare_node_dir(node)?;
        }
        net::create_node(
            &self.bridge,
            &self.links.namespace,
            &self.links.veth,
            &format!("{}/24", self.links.ip),
        )?;
        prepare_node_dir(&self.links)?;
        say("network: bridge auscult0 and namespaces auscult-n1..n3, auscult-links");

        for node in &self.nodes {
            self.start_etcd(node, true)?;
        }
        self.wait_etcd().await?;
        say("etcd: three members");
        for node in &self.nodes {
            self.start_patroni(node, &pg_bin)?;
        }
        let members = match self.wait_replicated(Duration::from_secs(120)).await {
            Ok(members) => members,
            Err(ClusterError::NotReady {
                what,
                waited,
                detail,
            }) => {
                return Err(ClusterError::NotReady {
                    what,
                    waited,
                    detail: format!("{detail}\n{}", self.log_tails("patroni", 12)),
                });
            }
            Err(other) => return Err(other),
        };
        say(&format!(
            "PostgreSQL under Patroni: {}",
            describe_members(&members)
        ));
        self.prepare_database().await?;
        say("database auscult migrated, the shipped model active");
        // A fault left from an earlier run of this directory must not greet the new cluster.
        links::write_faults(&self.faults_file(), &Faults::new())?;
        self.start_links().await?;
        say("search server and fault proxy on auscult-links");
        for node in &self.nodes {
            self.start_services(node)?;
        }
        self.wait_services(Duration::from_secs(90)).await?;
        say("ingest, listener and analysis serving on every node");
        Ok(())
    }

    /// Stops everything and removes the network; the directory stays unless `remove_data`.
    pub fn down(&self, remove_data: bool) -> Result<(), ClusterError> {
        for node in self.nodes.iter().chain([&self.links]) {
            if net::namespace_exists(&node.namespace) {
                self.kill_node(node)?;
            }
        }
        let pairs: Vec<(String, String)> = self
            .nodes
            .iter()
            .chain([&self.links])
            .map(|n| (n.namespace.clone(), n.veth.clone()))
            .collect();
        net::remove(&self.bridge, &pairs);
        if remove_data && self.plan.dir.exists() {
            std::fs::remove_dir_all(&self.plan.dir)
                .map_err(|e| ClusterError::Io(format!("{}: {e}", self.plan.dir.display())))?;
        }
        Ok(())
    }

    /// What runs where, and the database's view of its members.
    pub async fn status(&self) -> Status {
        let mut nodes = Vec::new();
        for node in &self.nodes {
            let processes = if net::namespace_exists(&node.namespace) {
                processes_in(&node.namespace).unwrap_or_default()
            } else {
                Vec::new()
            };
            let running = |name: &str| processes.iter().any(|p| p.comm.starts_with(name));
            nodes.push(NodeStatus {
                name: node.name.clone(),
                ip: node.ip.to_string(),
                connected: net::link_up(&node.veth),
                etcd: running("etcd"),
                postgres: running("postgres"),
                patroni: processes.iter().any(|p| p.cmdline.contains("patroni")),
                ingest: running("auscult-ingest"),
                listener: running("auscult-listen"),
                analysis: running("auscult-analys"),
            });
        }
        let links = if net::namespace_exists(&self.links.namespace) {
            processes_in(&self.links.namespace).unwrap_or_default()
        } else {
            Vec::new()
        };
        Status {
            nodes,
            members: self.members().await,
            search: links.iter().any(|p| p.comm.starts_with("osmem")),
            links: links.iter().any(|p| p.cmdline.contains("cluster links")),
            faults: links::read_faults(&self.faults_file()).unwrap_or_default(),
        }
    }

    /// Patroni's members as the nodes that answer see them.
    pub async fn members(&self) -> Vec<Member> {
        let apis: Vec<String> = self.nodes.iter().map(Node::patroni_api).collect();
        patroni::members(&self.http, &apis).await
    }

    /// The node whose PostgreSQL is the primary, if one is.
    pub async fn primary(&self) -> Option<usize> {
        let members = self.members().await;
        let leader = members
            .iter()
            .find(|m| m.role == "leader" && m.state == "running")?;
        self.nodes.iter().position(|n| n.name == leader.name)
    }

    /// SIGKILLs every process of `node`'s namespace: the node is gone, as if powered off.
    pub fn kill_node(&self, node: &Node) -> Result<(), ClusterError> {
        let pids: Vec<u32> = processes_in(&node.namespace)?
            .iter()
            .map(|p| p.pid)
            .collect();
        procs::signal_all(&pids, Signal::SIGKILL);
        Ok(())
    }

    /// SIGKILLs `node`'s Patroni and PostgreSQL: its database is gone, its services stay.
    pub fn kill_database(&self, node: &Node) -> Result<(), ClusterError> {
        let postgres_uid = postgres_user()?.uid.as_raw();
        let pids: Vec<u32> = processes_in(&node.namespace)?
            .iter()
            .filter(|p| p.uid == postgres_uid)
            .map(|p| p.pid)
            .collect();
        procs::signal_all(&pids, Signal::SIGKILL);
        Ok(())
    }

    /// SIGKILLs `node`'s replica of one service (`auscult-ingest`, `auscult-listener`, `auscult-analysis`).
    pub fn kill_service(&self, node: &Node, binary: &str) -> Result<(), ClusterError> {
        self.signal_service(node, binary, Signal::SIGKILL)
    }

    /// Sends `signal` to `node`'s replica of one service: SIGTERM asks it to drain and stop.
    pub fn signal_service(
        &self,
        node: &Node,
        binary: &str,
        signal: Signal,
    ) -> Result<(), ClusterError> {
        let comm = comm_of(binary);
        let pids: Vec<u32> = processes_in(&node.namespace)?
            .iter()
            .filter(|p| p.comm == comm)
            .map(|p| p.pid)
            .collect();
        if pids.is_empty() {
            return Err(ClusterError::Command(format!(
                "{binary} is not running on {}",
                node.name
            )));
        }
        procs::signal_all(&pids, signal);
        Ok(())
    }

    /// Starts what is not running on `node`: etcd, Patroni (its PostgreSQL rejoins as a standby) and the
    /// services.
    pub fn restart_node(&self, node: &Node) -> Result<(), ClusterError> {
        let processes = processes_in(&node.namespace)?;
        if !processes.iter().any(|p| p.comm == "etcd") {
            self.start_etcd(node, false)?;
        }
        if !processes.iter().any(|p| p.cmdline.contains("patroni")) {
            // A killed postmaster's children may linger a moment; Patroni cleans up after them.
            self.start_patroni(node, &postgres_bin_dir()?)?;
        }
        let running = |name: &str| processes.iter().any(|p| p.comm.starts_with(name));
        if !running("auscult-ingest") || !running("auscult-listen") || !running("auscult-analys") {
            self.start_services_where_missing(node, &processes)?;
        }
        Ok(())
    }

    /// Switches synchronous replication on or off in the running cluster (Patroni's dynamic
    /// configuration): off, a COMMIT no longer waits for a standby, and a failover may lose what the
    /// promoted standby had not received.
    pub async fn set_synchronous(&self, synchronous: bool) -> Result<(), ClusterError> {
        let body = serde_json::json!({
            "synchronous_mode": synchronous,
            "synchronous_mode_strict": synchronous,
        });
        for node in &self.nodes {
            let Ok(response) = self
                .http
                .patch(format!("{}/config", node.patroni_api()))
                .json(&body)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            else {
                continue;
            };
            if response.status().is_success() {
                return Ok(());
            }
        }
        Err(ClusterError::Command(
            "no Patroni member took the configuration change".into(),
        ))
    }

    /// Cuts `node` off the network (`false`) or reconnects it (`true`).
    pub fn connect(&self, node: &Node, connected: bool) -> Result<(), ClusterError> {
        net::ip(&[
            "link",
            "set",
            &node.veth,
            if connected { "up" } else { "down" },
        ])
    }

    /// Waits until Patroni reports a running leader and two standbys streaming from it (one of them
    /// synchronous when replication is).
    pub async fn wait_replicated(&self, timeout: Duration) -> Result<Vec<Member>, ClusterError> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < timeout {
            last = self.members().await;
            let leader = last
                .iter()
                .any(|m| m.role == "leader" && m.state == "running");
            let standbys = last
                .iter()
                .filter(|m| {
                    m.role != "leader" && matches!(m.state.as_str(), "streaming" | "running")
                })
                .count();
            let sync = !self.plan.synchronous || last.iter().any(|m| m.role == "sync_standby");
            if leader && standbys == NODES - 1 && sync {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ClusterError::NotReady {
            what: "PostgreSQL replication".into(),
            waited: timeout,
            detail: if last.is_empty() {
                "no Patroni member answers".into()
            } else {
                describe_members(&last)
            },
        })
    }

    /// Whether `program` (`ingest` or `analysis`) still runs on `node`, with the end of its log: a
    /// replica that never became ready must say why, before the cluster's directory is cleared.
    fn why_not_serving(&self, node: &Node, program: &str) -> String {
        let comm = comm_of(&format!("auscult-{program}"));
        let running = match processes_in(&node.namespace) {
            Ok(processes) if processes.iter().any(|p| p.comm == comm) => "still running".to_owned(),
            Ok(_) => "not running (exited)".to_owned(),
            Err(e) => format!("in an unknown state ({e})"),
        };
        let log = self.log_tail_of(node, program, 30);
        format!("{program} on {} is {running}{log}", node.name)
    }

    /// The last `lines` lines of each node's `what` log, for an error that must say why.
    pub fn log_tails(&self, what: &str, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|node| self.log_tail_of(node, what, lines))
            .collect()
    }

    fn log_tail_of(&self, node: &Node, what: &str, lines: usize) -> String {
        let path = node.log(what);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("\n--- {}:\n{}", path.display(), tail.join("\n"))
    }

    fn start_etcd(&self, node: &Node, new_cluster: bool) -> Result<(), ClusterError> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}=http://{}:2380", n.name, n.ip))
            .collect();
        let ip = node.ip;
        let args = vec![
            "--name".into(),
            node.name.clone(),
            "--data-dir".into(),
            node.dir.join("etcd").display().to_string(),
            "--listen-client-urls".into(),
            format!("http://{ip}:2379"),
            "--advertise-client-urls".into(),
            format!("http://{ip}:2379"),
            "--listen-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-advertise-peer-urls".into(),
            format!("http://{ip}:2380"),
            "--initial-cluster".into(),
            peers.join(","),
            "--initial-cluster-token".into(),
            "auscult".into(),
            "--initial-cluster-state".into(),
            if new_cluster { "new" } else { "existing" }.into(),
        ];
        procs::spawn_in(
            &node.namespace,
            None,
            Path::new(&which("etcd")?),
            &args,
            &[],
            &node.log("etcd"),
        )?;
        Ok(())
    }

    async fn wait_etcd(&self) -> Result<(), ClusterError> {
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        while started.elapsed() < timeout {
            let mut healthy = 0;
            for node in &self.nodes {
                let url = format!("http://{}:2379/health", node.ip);
                if let Ok(response) = self
                    .http
                    .get(url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    && response.status().is_success()
                {
                    healthy += 1;
                }
            }
            if healthy == NODES {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClusterError::NotReady {
            what: "etcd".into(),
            waited: timeout,
            detail: format!("see {}", self.nodes[0].log("etcd").display()),
        })
    }

    fn start_patroni(&self, node: &Node, pg_bin: &Path) -> Result<(), ClusterError> {
        let members: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.ip).collect();
        let config = patroni::config(
            &node.name,
            node.ip,
            &members,
            &self.subnet_cidr(),
            &node.dir,
            pg_bin,
            self.plan.synchronous,
        );
        let path = node.dir.join("patroni.yml");
        std::fs::write(&path, config)
            .map_err(|e| ClusterError::Io(format!("{}: {e}", path.display())))?;
        chown_postgres(&path)?;
        procs::spawn_in(
            &node.namespace,
            Some("postgres"),
            Path::new(&patroni_program()?),
            &[path.display().to_string()],
            &[],
            &node.log("patroni"),
        )?;
        Ok(())
    }

    /// Creates the auscult database on the primary, migrates it and activates the shipped model.
    async fn prepare_database(&self) -> Result<(), ClusterError> {
        let primary = self
            .primary()
            .await
            .ok_or_else(|| ClusterError::Database("no primary".into()))?;
        let admin_url = format!(
            "postgres://postgres@{}:5432/postgres",
            self.nodes[primary].ip
        );
        let db = |e: tokio_postgres::Error| ClusterError::Database(e.to_string());
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .map_err(db)?;
        tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = 'auscult'", &[])
            .await
            .map_err(db)?
            .is_some();
        if !exists {
            client
                .batch_execute("CREATE DATABASE auscult")
                .await
                .map_err(db)?;
        }
        let (mut client, connection) =
            tokio_postgres::connect(&self.database_url(), tokio_postgres::NoTls)
                .await
                .map_err(db)?;
        tokio::spawn(connection);
        let store = |e: auscult_store::StoreError| ClusterError::Database(e.to_string());
        auscult_store::migrate(&mut client).await.map_err(store)?;
        if auscult_store::active_model(&client)
            .await
            .map_err(store)?
            .is_none()
        {
            let bytes = auscult_model::shipped::bytes().ok_or_else(|| {
                ClusterError::Missing("the shipped model".into(), "this build has none".into())
            })?;
            let (info, _) = auscult_model::file::decode(bytes)
                .map_err(|e| ClusterError::Database(e.to_string()))?;
            auscult_store::publish_model(&client, &info.version, bytes, &serde_json::json!({}))
                .await
                .map_err(store)?;
            auscult_store::activate_model(&mut client, &info.version)
                .await
                .map_err(store)?;
        }
        Ok(())
    }

    fn start_services(&self, node: &Node) -> Result<(), ClusterError> {
        self.start_services_where_missing(node, &[])
    }

    fn start_services_where_missing(
        &self,
        node: &Node,
        running: &[NodeProcess],
    ) -> Result<(), ClusterError> {
        // Listeners reach analysis and search through their links, so that the suite can break those.
        let analysis: Vec<String> = (1..=NODES)
            .map(|i| {
                format!(
                    "http://{}:{}",
                    self.links.ip,
                    link_port(ANALYSIS_LINK_PORT, i)
                )
            })
            .collect();
        let ip = node.ip;
        let base = |port: u16, admin: u16| {
            let mut env = vec![
                ("AUSCULT__DATABASE__URL".to_owned(), self.database_url()),
                ("AUSCULT__LISTEN_ADDR".to_owned(), format!("{ip}:{port}")),
                ("AUSCULT__ADMIN_ADDR".to_owned(), format!("{ip}:{admin}")),
                ("RUST_LOG".to_owned(), "info".to_owned()),
            ];
            env.extend(self.plan.service_env.iter().cloned());
            env
        };
        let services = [
            ("auscult-analysis", "analysis", {
                let mut env = base(ANALYSIS_PORT, ANALYSIS_ADMIN_PORT);
                env.push(("AUSCULT__SCORING__WORKERS".into(), "1".into()));
                env
            }),
            (
                "auscult-ingest",
                "ingest",
                base(INGEST_PORT, INGEST_ADMIN_PORT),
            ),
            ("auscult-listener", "listener", {
                let mut env = base(LISTENER_PORT, LISTENER_ADMIN_PORT);
                env.push(("AUSCULT__ANALYSIS__ENDPOINTS".into(), analysis.join(",")));
                env.push(("AUSCULT__ELASTIC__URLS".into(), self.search_url()));
                env.push((
                    "AUSCULT__INSTANCE".into(),
                    format!("listener-{}", node.name),
                ));
                env
            }),
        ];
        for (binary, log, env) in services {
            let comm = comm_of(binary);
            if running.iter().any(|p| p.comm == comm) {
                continue;
            }
            let path = auscult_testkit::workspace_binary(binary)
                .map_err(|e| ClusterError::Missing(binary.into(), e.to_string()))?;
            procs::spawn_in(&node.namespace, None, &path, &[], &env, &node.log(log))?;
        }
        Ok(())
    }

    /// Waits until every node's ingest and analysis report SERVING.
    pub async fn wait_services(&self, timeout: Duration) -> Result<(), ClusterError> {
        for node in &self.nodes {
            for (endpoint, service, program) in [
                (node.ingest_endpoint(), "auscult.ingest.v1.Ingest", "ingest"),
                (
                    node.analysis_endpoint(),
                    "auscult.analysis.v1.Analysis",
                    "analysis",
                ),
            ] {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| ClusterError::Command(e.to_string()))?;
                if !auscult_testkit::wait_grpc_serving(&channel, service, timeout).await {
                    return Err(ClusterError::NotReady {
                        what: endpoint,
                        waited: timeout,
                        detail: self.why_not_serving(node, program),
                    });
                }
            }
        }
        Ok(())
    }
}

/// What `auscult cluster status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    #[serde(serialize_with = "serialize_members")]
    pub members: Vec<Member>,
    /// The Elasticsearch-API server runs.
    pub search: bool,
    /// The fault proxy runs.
    pub links: bool,
    /// The link faults in force.
    pub faults: Faults,
}

fn serialize_members<S: serde::Serializer>(
    members: &[Member],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(members.len()))?;
    for m in members {
        seq.serialize_element(&serde_json::json!({
            "name": m.name, "role": m.role, "state": m.state, "lag": m.lag,
        }))?;
    }
    seq.end()
}

/// One node in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub ip: String,
    pub connected: bool,
    pub etcd: bool,
    pub patroni: bool,
    pub postgres: bool,
    pub ingest: bool,
    pub listener: bool,
    pub analysis: bool,
}

fn link_port(base: u16, node: usize) -> u16 {
    base + u16::try_from(node).unwrap_or(0)
}

/// `n1 leader running, n2 sync_standby streaming, …`.
pub fn describe_members(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{} {} {}", m.name, m.role, m.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name the kernel keeps for a program (`/proc/PID/status`), by which a namespace's processes
/// are told apart: its first 15 bytes.
fn comm_of(program: &str) -> String {
    program.chars().take(15).collect()
}

fn which(tool: &str) -> Result<String, ClusterError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            ClusterError::Missing(
                tool.into(),
                "install it (see the README: etcd-server, and Patroni in /opt/auscult-patroni)"
                    .into(),
            )
        })
}

/// Patroni runs as the postgres user, so it must be an installation that user can read (a copy under root's
/// home, as pip in a pyenv puts it, is not): `AUSCULT_PATRONI`, else the virtual environment `.ci/run` and
/// the README make (`/opt/auscult-patroni`), else the system's. Patroni 4.0.6 or later: earlier releases
/// can take a stale etcd member's view for the truth after a partition heals, and promote the wrong node.
fn patroni_program() -> Result<String, ClusterError> {
    if let Some(program) = std::env::var_os("AUSCULT_PATRONI") {
        return Ok(PathBuf::from(program).display().to_string());
    }
    ["/opt/auscult-patroni/bin/patroni", "/usr/bin/patroni"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .map_or_else(|| which("patroni"), Ok)
}

fn postgres_bin_dir() -> Result<PathBuf, ClusterError> {
    auscult_testkit::postgres_bin_dir().map_err(|e| {
        ClusterError::Missing(
            "PostgreSQL".into(),
            format!("{e}: install the server (apt install postgresql)"),
        )
    })
}

fn postgres_user() -> Result<nix::unistd::User, ClusterError> {
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            ClusterError::Missing(
                "the postgres user".into(),
                "install PostgreSQL (apt install postgresql)".into(),
            )
        })
}

fn chown_postgres(path: &Path) -> Result<(), ClusterError> {
    let user = postgres_user()?;
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| ClusterError::Io(format!("chown {}: {e}", path.display())))
}

/// A node's directory: etcd's data (root), PostgreSQL's (the postgres user, mode 0700 as it demands).
fn prepare_node_dir(node: &Node) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path, e: std::io::Error| ClusterError::Io(format!("{}: {e}", path.display()));
    for dir in [&node.dir, &node.dir.join("socket")] {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        chown_postgres(dir)?;
    }
    std::fs::set_permissions(&node.dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io(&node.dir, e))?;
    // The cluster's root directory must be traversable by the postgres user too.
    if let Some(parent) = node.dir.parent() {
        let mode = std::fs::metadata(parent)
            .map_err(|e| io(parent, e))?
            .permissions()
            .mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711))
            .map_err(|e| io(parent, e))?;
    }
    Ok(())
}
