//! `auscult cluster up|down|status`: the three-node cluster on this machine (network namespaces, etcd,
//! Patroni-managed PostgreSQL, every service on every node) that `auscult chaos` breaks on purpose.

use std::path::PathBuf;

use anyhow::Context;
use auscult_cluster::{Cluster, ClusterPlan};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build the cluster and start everything; returns once every node serves.
    Up(UpArgs),
    /// Stop everything and remove the network namespaces and the bridge.
    Down(DownArgs),
    /// What runs on each node, and the database members' roles.
    Status(StatusArgs),
    /// Run the cluster's fault proxy in the foreground (`up` starts it in the links namespace).
    #[command(hide = true)]
    Links(LinksArgs),
}

#[derive(Debug, clap::Args)]
pub struct LinksArgs {
    #[command(flatten)]
    location: Location,
}

/// Where the cluster keeps its data, configuration and logs.
#[derive(Debug, Clone, clap::Args)]
pub struct Location {
    #[arg(
        long,
        env = "AUSCULT_CLUSTER_DIR",
        default_value = "/var/tmp/auscult-cluster"
    )]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    location: Location,
    /// Asynchronous replication: writes go on while standbys lag, and a failover can lose the
    /// acknowledged frames they had not received yet.
    #[arg(long)]
    asynchronous: bool,
    /// The first three octets of the private /24 the nodes live on.
    #[arg(long, default_value = "10.77.0", value_parser = parse_subnet)]
    subnet: [u8; 3],
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    location: Location,
    /// Also delete the directory (databases and logs).
    #[arg(long)]
    remove_data: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    location: Location,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let mut plan = ClusterPlan::new(&args.location.dir);
            plan.synchronous = !args.asynchronous;
            plan.subnet = args.subnet;
            let cluster = Cluster::new(plan);
            cluster
                .up(|step| eprintln!("{step}"))
                .await
                .context("starting the cluster (auscult cluster down cleans up)")?;
            println!("ingest: {}", cluster.ingest_endpoints().join(","));
            println!("database: {}", cluster.database_url());
            println!("search: {}", cluster.search_url());
            Ok(())
        }
        Command::Down(args) => {
            let cluster = Cluster::open(&args.location.dir)?;
            cluster.down(args.remove_data)?;
            eprintln!("cluster in {} stopped", args.location.dir.display());
            Ok(())
        }
        Command::Status(args) => {
            let cluster = Cluster::open(&args.location.dir)?;
            let status = cluster.status().await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let yes = |b: bool| if b { "up" } else { "-" };
                println!("node ip           link etcd patroni postgres ingest listener analysis");
                for node in &status.nodes {
                    println!(
                        "{:<4} {:<13} {:<4} {:<4} {:<7} {:<8} {:<6} {:<8} {}",
                        node.name,
                        node.ip,
                        yes(node.connected),
                        yes(node.etcd),
                        yes(node.patroni),
                        yes(node.postgres),
                        yes(node.ingest),
                        yes(node.listener),
                        yes(node.analysis)
                    );
                }
                println!(
                    "database: {}",
                    auscult_cluster::describe_members(&status.members)
                );
                println!(
                    "links: search server {}, fault proxy {}, faults {}",
                    yes(status.search),
                    yes(status.links),
                    if status
                        .faults
                        .values()
                        .all(|f| *f == auscult_cluster::LinkFault::Pass)
                    {
                        "none".to_owned()
                    } else {
                        serde_json::to_string(&status.faults)?
                    }
                );
            }
            Ok(())
        }
        Command::Links(args) => {
            let cluster = Cluster::open(&args.location.dir)?;
            eprintln!(
                "links: {} routes, faults from {}",
                cluster.link_table().len(),
                cluster.faults_file().display()
            );
            cluster.run_links().await?;
            Ok(())
        }
    }
}

fn parse_subnet(text: &str) -> Result<[u8; 3], String> {
    let octets: Vec<u8> = text
        .split('.')
        .map(|o| {
            o.parse::<u8>()
                .map_err(|_| format!("{text:?}: not three octets like 10.77.0"))
        })
        .collect::<Result<_, _>>()?;
    <[u8; 3]>::try_from(octets).map_err(|_| format!("{text:?}: not three octets like 10.77.0"))
}
