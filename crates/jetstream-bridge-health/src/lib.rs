#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod error;
mod health;
#[cfg(feature = "http")]
mod http;
mod mask;
mod metrics;
mod report;
mod shutdown;
mod watch;

pub use error::{HealthError, HealthErrorKind, Result};
pub use health::{
    Health, HealthBuilder, Liveness, Readiness, DEFAULT_MIN_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_STALL_AFTER, RESTRICTED_REASON,
};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use http::{router, HEALTH_PATH, LIVE_PATH, METRICS_PATH, READY_PATH};
pub use metrics::{
    MessageStatus, Metrics, DEFAULT_MAX_EVENT_TYPES, MAX_EVENT_TYPE_LEN, METRICS_CONTENT_TYPE,
    OTHER_EVENT_TYPE,
};
pub use report::{
    ConfigReport, ConnectionReport, ConsumerReport, DlqReport, HealthReport, OutboxReport,
    PerformanceReport, RuntimeLiveness, RuntimeReport, SkippedReport, StreamReport,
};
pub use shutdown::{Shutdown, ShutdownSignal};
