ALTER TABLE jetstream_outbox_events ALTER COLUMN payload DROP DEFAULT;
ALTER TABLE jetstream_outbox_events ALTER COLUMN payload TYPE jsonb USING payload::jsonb;
ALTER TABLE jetstream_outbox_events ALTER COLUMN payload SET DEFAULT '{}'::jsonb;
