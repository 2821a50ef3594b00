#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod check;
mod connect;
mod consumer;
mod ensure;
mod error;
mod lock;
mod spec;
mod stream;
mod violations;

pub use check::{check, DurableCheck, DurableIssue, StreamCheck, TopologyCheck};
pub use connect::{connect, connect_options, server_urls, Connection};
pub use consumer::{bind_pull_consumer, lookup_durable, DurableInfo};
pub use ensure::{
    ensure_topology, plan, Note, PlannedAction, StreamRole, TopologyPlan, TopologyReport,
};
pub use error::{
    BoxError, ConsumerDrift, FieldDrift, OverlapConflict, Problem, Result, TopologyError,
    TopologyErrorKind, Warning,
};
pub use lock::{DEFAULT_LOCK_BUCKET, DEFAULT_LOCK_TTL};
pub use spec::{
    DlqPlacement, DriftPolicy, EnsureOptions, TopologySpec, UnknownNameError, DEFAULT_DLQ_MAX_AGE,
    DLQ_STREAM_SUFFIX,
};
pub use violations::{Operation, PermissionViolation, PermissionViolations};
