#![doc = include_str!("../README.md")]
// This crate is test support and only ever a dev-dependency. When a server cannot be reached or
// a fixture cannot be set up, the test cannot run anyway, so the helpers panic with a message that
// says what failed and how to fix it (instead of handing every test a `Result` to unwrap).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod db;
mod eventually;
mod nats;
mod nats_server;
mod pg_server;
mod process;
mod service;
mod unique;

pub use db::TestDb;
pub use eventually::{eventually, Outcome, EVENTUALLY_INTERVAL};
pub use nats::{server_round_trip, TestNats, DEFAULT_NATS_URL, TEST_STREAM_MAX_AGE};
pub use nats_server::{NatsCluster, NatsServer, NatsServerBuilder};
pub use pg_server::PgServer;
pub use service::InboxRow;
pub use unique::unique_token;

/// Re-exported so tests name the same versions as the testkit.
pub use {async_nats, diesel_async};
