#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod dlq;
mod error;
mod handler;
mod middleware;
mod process;
mod runtime;

pub use admin::{DeadLetter, DeadLetterQueue, DlqError, DlqErrorKind, DlqFilter, ReplayOptions};
pub use error::{ConsumerError, ConsumerErrorKind, Result};
pub use handler::{BatchHandler, Batched, Event, Handler, HandlerAction, HandlerError, Metadata};
pub use middleware::{
    BoxFuture, LoggingMiddleware, MetricsMiddleware, Middleware, Next, TimeoutMiddleware,
};
pub use runtime::{
    Consumer, ConsumerBuilder, ConsumerHandle, ConsumerStats, NoHandler, ShutdownReport,
};
