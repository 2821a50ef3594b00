-- The outbox payload keeps the exact text written at enqueue (jetstream-bridge-outbox): `json`
-- stores its input verbatim (key order, number formatting, escapes), where `jsonb` re-orders
-- keys and normalises numbers, so a relayed message would differ byte for byte from the one a
-- direct publish (or the Ruby gem) sends. `json` is also cheaper to write and to read back as
-- text. The column stays JSON-typed, as the gem expects; nothing queries it with jsonb
-- operators. Rewrites the table: rows still unsent keep their values, in jsonb's text form.
ALTER TABLE jetstream_outbox_events ALTER COLUMN payload DROP DEFAULT;
ALTER TABLE jetstream_outbox_events ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE jetstream_outbox_events ALTER COLUMN payload SET DEFAULT '{}'::json;
