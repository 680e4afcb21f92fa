//! `auscult`: the operator's command line — installation set-up, health checks, database migrations, the
//! device registry, the gateway simulator, the model commands (train, evaluate, score, enroll),
//! Elasticsearch and Kibana set-up, and the benchmarks.

mod commands;
mod database;
mod local_stack;

use clap::{Parser, Subcommand};

/// Training allocates and frees tensors of megabytes many times a second; glibc's allocator
/// hands such blocks back to the kernel and faults them in again on every step (a fifth of a
/// training step went to page faults). mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// auscult listens to industrial machines and tells operators which one is about to fail.
#[derive(Debug, Parser)]
#[command(name = "auscult", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending database migrations (safe to run from several places at once).
    Migrate(commands::migrate::Args),
    /// Prepare a fresh installation: migrations, index templates, Kibana objects, the shipped model.
    Setup(commands::setup::Args),
    /// Ask a service's gRPC health check; succeeds when it answers SERVING.
    Health(commands::health::Args),
    /// Run the whole system on this machine and stream sample recordings through it.
    Demo(commands::demo::Args),
    /// Register gateway devices and manage their tokens.
    #[command(subcommand)]
    Device(commands::device::Command),
    /// Act as gateways: stream frames from WAV files or a synthetic signal to ingest.
    Simulate(commands::simulate::Args),
    /// Train a model on labelled recordings (dataset folders with a manifest.csv).
    Train(commands::train::Args),
    /// Measure a model on labelled recordings: AUC, pAUC, precision, recall and F1 per machine type.
    Evaluate(commands::evaluate::Args),
    /// Judge recordings: verdict, class, anomaly score, threshold and the bands that explain it.
    Score(commands::score::Args),
    /// Fit a model's statistics for new machines from recordings of their normal sound.
    Enroll(commands::enroll::Args),
    /// The model registry: publish model files, list them, activate one.
    #[command(subcommand)]
    Model(commands::model::Command),
    /// The Elasticsearch projection: index templates, indexing status, reindex, dead letters.
    #[command(subcommand)]
    Elastic(commands::elastic::Command),
    /// Kibana: load the auscult data views and dashboard.
    #[command(subcommand)]
    Kibana(commands::kibana::Command),
    /// Data lifecycle: size per kind and partition, what leaves next and when; a pass on demand.
    #[command(subcommand)]
    Retention(commands::retention::Command),
    /// A three-node cluster on this machine (network namespaces, Patroni, every service on every node).
    #[command(subcommand)]
    Cluster(commands::cluster::Command),
    /// Break that cluster under load and check that nothing acknowledged was lost or stored twice.
    Chaos(commands::chaos::Args),
    /// Audio clips: the sound around an alert, as a WAV file.
    #[command(subcommand)]
    Clip(commands::clip::Command),
    /// Measure the system on this machine.
    #[command(subcommand)]
    Bench(commands::bench::Command),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it sends the last spans of a traced `auscult gateway`.
    let _tracing = auscult_telemetry::init_tracing(
        auscult_telemetry::LogFormat::from_env(),
        "warn",
        "auscult",
    )?;
    match cli.command {
        Command::Migrate(args) => commands::migrate::run(args).await,
        Command::Setup(args) => commands::setup::run(args),
        Command::Health(args) => commands::health::run(args).await,
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Device(command) => commands::device::run(command).await,
        Command::Simulate(args) => commands::simulate::run(args).await,
        Command::Train(args) => commands::train::run(args),
        Command::Evaluate(args) => commands::evaluate::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Enroll(args) => commands::enroll::run(args),
        Command::Model(command) => commands::model::run(command).await,
        Command::Elastic(command) => commands::elastic::run(command).await,
        Command::Kibana(command) => commands::kibana::run(command).await,
        Command::Retention(command) => commands::retention::run(command).await,
        Command::Cluster(command) => commands::cluster::run(command).await,
        Command::Chaos(args) => commands::chaos::run(args).await,
        Command::Clip(command) => commands::clip::run(command).await,
        Command::Bench(command) => commands::bench::run(command).await,
    }
}
