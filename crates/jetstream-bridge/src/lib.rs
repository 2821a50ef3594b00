#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;

pub use error::{Error, Result};

/// Configuration, subjects, durations, URL masking and the wire envelope
/// (the `jetstream-bridge-config` crate).
#[doc(inline)]
pub use jetstream_bridge_config as config;

#[doc(inline)]
pub use jetstream_bridge_config::{
    Config, ConfigBuilder, ConfigError, ConsumerMode, DlqContext, DlqReason, Envelope,
    EnvelopeError, EventId, Preset, Redacted, Subject, SubjectLayout, Subjects, TraceParent,
};

#[cfg(feature = "topology")]
#[cfg_attr(docsrs, doc(cfg(feature = "topology")))]
#[doc(inline)]
pub use jetstream_bridge_topology as topology;

#[cfg(feature = "topology")]
#[cfg_attr(docsrs, doc(cfg(feature = "topology")))]
#[doc(inline)]
pub use jetstream_bridge_topology::{
    connect, ensure_topology, TopologyError, TopologyErrorKind, TopologySpec,
};

#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
#[doc(inline)]
pub use jetstream_bridge_outbox as outbox;

#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
#[doc(inline)]
pub use jetstream_bridge_outbox::{
    NewEvent, Outbox, OutboxError, OutboxErrorKind, Published, Publisher, Relay,
};

/// PostgreSQL plumbing: the embedded migrations and their runner ([`pg::Migrator`]), database
/// error classification, the pool type, retention (the `jetstream-bridge-pg` crate).
#[cfg(feature = "pg")]
#[cfg_attr(docsrs, doc(cfg(feature = "pg")))]
#[doc(inline)]
pub use jetstream_bridge_pg as pg;

/// The NATS client this crate is built against, so applications name the same version.
#[cfg(any(feature = "topology", feature = "outbox", feature = "consumer"))]
pub use async_nats;

/// The async PostgreSQL layer this crate is built against (the connections passed to
/// `Outbox::enqueue` and to handlers).
#[cfg(feature = "pg")]
pub use diesel_async;

#[cfg(feature = "inbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "inbox")))]
#[doc(inline)]
pub use jetstream_bridge_inbox as inbox;

#[cfg(feature = "inbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "inbox")))]
#[doc(inline)]
pub use jetstream_bridge_inbox::{Inbox, InboxError, InboxErrorKind, Recorded};

#[cfg(feature = "consumer")]
#[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
#[doc(inline)]
pub use jetstream_bridge_consumer as consumer;

#[cfg(feature = "consumer")]
#[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
#[doc(inline)]
pub use jetstream_bridge_consumer::{
    Consumer, ConsumerError, ConsumerErrorKind, ConsumerHandle, Event, Handler, HandlerError,
    ShutdownReport,
};

/// Traits an application implements or calls methods of, for a glob import.
pub mod prelude {
    #[cfg(feature = "consumer")]
    #[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
    pub use jetstream_bridge_consumer::{BatchHandler, Handler, Middleware};
}

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
#[doc(inline)]
pub use jetstream_bridge_health as health;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
#[doc(inline)]
pub use jetstream_bridge_health::{Health, HealthError, HealthErrorKind, HealthReport, Metrics};
