#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod backoff;
mod error;
mod model;
mod publisher;
mod relay;
pub mod schema;
mod store;
mod window;

pub use admin::{ErrorCount, FailedRows, OutboxStatus, Requeued};
pub use error::{OutboxError, OutboxErrorKind, Result};
pub use model::{NewEvent, Status};
pub use publisher::{Published, Publisher};
pub use relay::{
    PgPool, Relay, RelayBuilder, RelayHandle, RelayReport, RelayStats, NOTIFY_CHANNEL,
};
pub use store::{Backlog, Outbox};
