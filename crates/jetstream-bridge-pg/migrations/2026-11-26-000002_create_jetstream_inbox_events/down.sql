DROP TABLE IF EXISTS jetstream_inbox_events;
