//! PostgreSQL plumbing shared by the jetstream-bridge crates, with one owner for each concern:
//!
//! - [`Migrator`]: the embedded migrations for `jetstream_outbox_events` and
//!   `jetstream_inbox_events` and their runner (advisory lock, checksums of applied
//!   migrations, component selection). The `jetstream-bridge migrate` command calls it.
//! - [`classify`] / [`DbErrorClass`]: whether a database error is an outage (wait, never count
//!   it against a message or an event) or belongs to the statement.
//! - [`Pool`] / [`pool`]: the connection pool type the runtime crates take.
//! - [`delete_in_batches`]: batched retention for the outbox and the inbox.
//! - [`prepared`] / [`Prepared`]: fixed-text statements each connection prepares once (the
//!   runtime's hot statements; `diesel::sql_query` prepares and plans on every execution).
//!
//! See the [architecture guide](https://github.com/jetstream-bridge/jetstream-bridge/blob/main/docs/ARCHITECTURE.md).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(rustdoc::broken_intra_doc_links)]

mod error;
mod migrate;
mod pool;
mod prepared;
mod retention;

pub use error::{classify, DbErrorClass, PgError, PgErrorKind, Result};
pub use migrate::{
    Component, Migration, MigrationState, MigrationStatus, Migrator, UnknownComponent, MIGRATIONS,
};
pub use pool::{pool, pool_error, Pool, PoolError, PooledConnection};
pub use prepared::{prepared, Binds, Bound, Prepared, MAX_BINDS};
pub use retention::{delete_in_batches, Retention};
