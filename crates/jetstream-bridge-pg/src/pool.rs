//! [`Pool`]: the deadpool pool of async PostgreSQL connections that the relay, the consumer's
//! inbox and health share, and [`pool`] to build one.

use diesel_async::pooled_connection::deadpool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;

use crate::error::{PgError, PgErrorKind, Result};

/// A pool of [`AsyncPgConnection`]s (diesel-async's deadpool integration).
pub type Pool = deadpool::Pool<AsyncPgConnection>;

/// A connection checked out of a [`Pool`].
pub type PooledConnection = deadpool::Object<AsyncPgConnection>;

/// The error a [`Pool`] returns when it hands out no connection. Always an outage: the pool
/// timed out waiting, or the database refused or dropped the new connection.
pub type PoolError = deadpool::PoolError;

/// A pool of at most `max_size` connections to `database_url`. Connections are opened lazily,
/// on first use, so this does not touch the network.
///
/// Size it per process: the relay holds one connection (two with `LISTEN`), the consumer one
/// per concurrent message (or per batch), health one for its probes.
///
/// # Errors
///
/// [`InvalidPool`](PgErrorKind::InvalidPool) when `max_size` is zero or the pool cannot be
/// built.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool> {
    if max_size == 0 {
        return Err(PgError::new(PgErrorKind::InvalidArgument(
            "pool size must be at least 1",
        )));
    }
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| PgError::with_source(PgErrorKind::InvalidPool, e))
}

/// Turns a pool error into a [`PgError`]: always [`Unavailable`](PgErrorKind::Unavailable),
/// except a pool built without a runtime or already closed, which are the caller's mistake.
#[must_use]
pub fn pool_error(error: PoolError) -> PgError {
    let kind = match &error {
        deadpool::PoolError::Closed | deadpool::PoolError::NoRuntimeSpecified => {
            PgErrorKind::InvalidPool
        }
        _ => PgErrorKind::Unavailable,
    };
    PgError::with_source(kind, error)
}
