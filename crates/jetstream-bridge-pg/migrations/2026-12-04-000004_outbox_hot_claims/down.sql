ALTER TABLE jetstream_outbox_events RESET (fillfactor);
