//! The diesel schema of the outbox table, for joins and ad-hoc queries in applications.

diesel::table! {
    /// `jetstream_outbox_events`: one row per enqueued event (see `docs/OUTBOX.md`).
    jetstream_outbox_events (id) {
        /// Insertion order; the relay publishes in this order.
        id -> BigInt,
        /// The envelope's `event_id`, unique; sent as `Nats-Msg-Id`.
        event_id -> Text,
        /// The subject the event is published to.
        subject -> Text,
        /// The envelope as a JSON object, stored (type `json`) exactly as serialized at enqueue
        /// and published byte for byte (a gem-written row may hold it as a JSON string).
        payload -> Json,
        /// Extra headers to publish (`traceparent`), as a JSON object of strings.
        headers -> Jsonb,
        /// `pending` (also while claimed: see `claimed_until`), `sent`, `failed` (quarantined), or
        /// `publishing` (claimed, as written by earlier versions and other tools).
        status -> Text,
        /// Failed publish attempts so far.
        attempts -> Integer,
        /// The last publish error.
        last_error -> Nullable<Text>,
        /// When the event was enqueued.
        enqueued_at -> Timestamptz,
        /// When JetStream acknowledged it.
        sent_at -> Nullable<Timestamptz>,
        /// Row creation time.
        created_at -> Timestamptz,
        /// Last change of the row.
        updated_at -> Timestamptz,
        /// Not claimed before this time (back-off after a failed attempt).
        next_attempt_at -> Timestamptz,
        /// The claim lease: another relay may reclaim the row after this time.
        claimed_until -> Nullable<Timestamptz>,
        /// The relay instance holding the claim.
        claimed_by -> Nullable<Text>,
        /// Events with the same key are published in insertion order when ordering is on.
        ordering_key -> Text,
    }
}
