//! Fault suite for jetstream-bridge (not published).
//!
//! The `fault-worker` binary runs a relay and/or a consumer with the inbox, configured from
//! its environment; the tests in `tests/it` start it as a real process, kill it with SIGKILL,
//! kill the NATS servers under it, and check exact counts in PostgreSQL and the stream.
//! Results and what they mean: `docs/RELIABILITY.md`.

/// Environment variables the `fault-worker` binary reads (the tests set them).
pub mod vars {
    /// `relay`, `consumer` or `both`.
    pub const ROLE: &str = "FW_ROLE";
    /// NATS server URLs, comma-separated, credentials allowed.
    pub const NATS_URLS: &str = "FW_NATS_URLS";
    /// PostgreSQL URL, credentials allowed.
    pub const DATABASE_URL: &str = "FW_DATABASE_URL";
    /// The config's `env` (subject prefix).
    pub const ENV: &str = "FW_ENV";
    /// The stream name.
    pub const STREAM: &str = "FW_STREAM";
    /// Stream replicas (default 1).
    pub const REPLICAS: &str = "FW_REPLICAS";
    /// Relay lease in milliseconds (default 2000).
    pub const LEASE_MS: &str = "FW_LEASE_MS";
    /// `1`: the consumer uses the batch handler.
    pub const BATCH: &str = "FW_BATCH";
    /// Sleep inside each batch transaction, in milliseconds (default 0).
    pub const BATCH_DELAY_MS: &str = "FW_BATCH_DELAY_MS";
    /// Consumer pull batch size (default 100).
    pub const BATCH_SIZE: &str = "FW_BATCH_SIZE";
    /// The consumer's `max_deliver` (default 10).
    pub const MAX_DELIVER: &str = "FW_MAX_DELIVER";
    /// The consumer's backoff, comma-separated durations (default `200ms`).
    pub const BACKOFF: &str = "FW_BACKOFF";
    /// The consumer's `ack_wait` (default `2s`).
    pub const ACK_WAIT: &str = "FW_ACK_WAIT";
}

/// Table the worker's handler writes one row into per applied event (no unique constraint,
/// so a duplicate effect would show as a second row).
pub const EFFECTS_DDL: &str = "CREATE TABLE effects (id bigserial PRIMARY KEY, \
    event_id text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())";

/// Table the worker writes one row into per delivery of a poison event, outside the inbox
/// transaction (so failed attempts stay visible).
pub const ATTEMPTS_DDL: &str = "CREATE TABLE attempts (id bigserial PRIMARY KEY, \
    event_id text NOT NULL, delivery integer NOT NULL, \
    at timestamptz NOT NULL DEFAULT clock_timestamp())";
