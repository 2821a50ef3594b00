#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod attempt;
mod builder;
mod dispatch;
mod dlq;
mod error;
mod event;
mod fetch;
mod handler;
mod middleware;
mod outage;
mod process;
mod progress;
mod redelivery;
mod retry;
mod runtime;
mod slots;
mod stats;

pub use admin::{DeadLetter, DeadLetterQueue, DlqError, DlqErrorKind, DlqFilter, ReplayOptions};
pub use builder::{ConsumerBuilder, NoHandler, NoInbox, WithInbox};
pub use error::{ConsumerError, ConsumerErrorKind, Result};
pub use event::{Event, Metadata};
pub use handler::{
    BatchHandler, Batched, Handler, HandlerAction, HandlerError, InboxBatchHandler, InboxHandler,
};
pub use middleware::{
    BoxFuture, LoggingMiddleware, MetricsMiddleware, MetricsRecorder, Middleware, Next,
    TimeoutMiddleware,
};
pub use runtime::{Consumer, ConsumerHandle};
pub use stats::{ConsumerStats, ShutdownReport};
