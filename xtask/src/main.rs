//! Project tasks for jetstream-bridge: `cargo xtask <task>` (see `--help`).
//!
//! Each task prints what it does before doing it and exits non-zero on failure.
#![allow(clippy::print_stdout)]

use clap::Parser;

mod bench;
mod ensure_topology;
mod migrate;
mod smoke;
mod test;

/// jetstream-bridge project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
enum Command {
    /// Publish one envelope to JetStream exactly as a Ruby peer reads it, read it back through a
    /// durable pull consumer and check it byte for byte (the main job until the sync demo lands).
    Smoke(smoke::Args),
    /// Run the whole test suite (`cargo test --workspace`) and print one total line; what `.ci/run`
    /// runs after `.ci/services.sh`.
    Test(test::Args),
    /// Create or upgrade every table (outbox and inbox) in DATABASE_URL; `jetstream-bridge
    /// migrate` (idempotent: a second run applies nothing and says so).
    Migrate(migrate::Args),
    /// Delete `sent` outbox rows older than `--older-than` (default 7d) in bounded batches;
    /// `jetstream-bridge outbox cleanup`.
    OutboxRetention(migrate::RetentionArgs),
    /// Benchmark every scenario (or the named ones) against raw async-nats / raw Postgres
    /// measured in the same run, with PASS/FAIL per target; run with
    /// `cargo run --release -p xtask -- bench ...` for real figures.
    Bench(bench::Args),
    /// Create or verify the stream, DLQ stream and durable consumer of one service;
    /// `jetstream-bridge ensure-topology` (idempotent; `--dry-run` prints the plan and changes
    /// nothing; exits non-zero on overlaps, drift, permission or connection errors).
    EnsureTopology(ensure_topology::Args),
    /// One side of `bench memory`, started by it in a process of its own.
    #[command(hide = true)]
    BenchPart,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Command::parse() {
        Command::Smoke(args) => runtime.block_on(smoke::run(args)),
        Command::Test(args) => test::run(args),
        Command::Migrate(args) => runtime.block_on(migrate::run(args)),
        Command::OutboxRetention(args) => runtime.block_on(migrate::retention(args)),
        Command::Bench(args) => {
            runtime.block_on(async move { tokio::spawn(bench::run(args)).await? })
        }
        Command::EnsureTopology(args) => runtime.block_on(ensure_topology::run(args)),
        Command::BenchPart => runtime.block_on(bench::part()),
    }
}
