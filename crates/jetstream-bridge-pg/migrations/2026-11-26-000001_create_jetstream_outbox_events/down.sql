DROP TRIGGER IF EXISTS jetstream_outbox_events_notify ON jetstream_outbox_events;
DROP FUNCTION IF EXISTS jetstream_outbox_events_notify();
DROP TABLE IF EXISTS jetstream_outbox_events;
