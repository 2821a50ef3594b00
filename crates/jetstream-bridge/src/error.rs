//! The umbrella error: one type that every layer's error converts into.

/// Any error of jetstream-bridge, for applications that want a single error type.
///
/// Each variant wraps the error of one layer; match on it to branch, or use `?` to convert.
/// New layers add variants, so the enum is `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building a [`Config`](crate::Config) failed (every problem is listed).
    #[error(transparent)]
    Config(#[from] jetstream_bridge_config::ConfigError),
    /// A message body is not a valid envelope, or an envelope is too large.
    #[error(transparent)]
    Envelope(#[from] jetstream_bridge_config::EnvelopeError),
    /// Connecting, or provisioning streams and consumers, failed.
    #[cfg(feature = "topology")]
    #[cfg_attr(docsrs, doc(cfg(feature = "topology")))]
    #[error(transparent)]
    Topology(#[from] jetstream_bridge_topology::TopologyError),
    /// Enqueueing, relaying or publishing an event failed.
    #[cfg(feature = "outbox")]
    #[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
    #[error(transparent)]
    Outbox(#[from] jetstream_bridge_outbox::OutboxError),
    /// Recording an event in the inbox failed.
    #[cfg(feature = "inbox")]
    #[cfg_attr(docsrs, doc(cfg(feature = "inbox")))]
    #[error(transparent)]
    Inbox(#[from] jetstream_bridge_inbox::InboxError),
    /// Building or running the consumer runtime failed.
    #[cfg(feature = "consumer")]
    #[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
    #[error(transparent)]
    Consumer(#[from] jetstream_bridge_consumer::ConsumerError),
    /// Building a health checker or serving its probes failed.
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    #[error(transparent)]
    Health(#[from] jetstream_bridge_health::HealthError),
}

/// `Result` with the umbrella [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_errors_convert_and_keep_their_message() {
        let config_error = crate::Config::builder("prod", "orders", "orders")
            .build()
            .unwrap_err();
        let message = config_error.to_string();
        let error: Error = config_error.into();
        assert!(matches!(error, Error::Config(_)));
        assert_eq!(error.to_string(), message);

        let envelope_error = crate::Envelope::from_slice(b"[1, 2]").unwrap_err();
        let error: Error = envelope_error.into();
        assert!(matches!(error, Error::Envelope(ref e) if e.is_malformed()));
    }
}
