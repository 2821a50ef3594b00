-- The transactional outbox (jetstream-bridge-outbox). Columns of the Ruby gem's template
-- (upstream-gem.md §2) plus what the relay needs; see docs/OUTBOX.md.
-- Timestamps are timestamptz: the relay compares leases and back-off times with now(), which
-- must not depend on the session's TimeZone.
CREATE TABLE IF NOT EXISTS jetstream_outbox_events (
  id              bigserial PRIMARY KEY,
  event_id        character varying NOT NULL,
  subject         character varying NOT NULL,
  -- The envelope as a real JSON object (never a double-encoded string; readers accept both).
  payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
  headers         jsonb NOT NULL DEFAULT '{}'::jsonb,
  status          character varying NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'publishing', 'sent', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  last_error      text,
  enqueued_at     timestamptz NOT NULL DEFAULT now(),
  sent_at         timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  -- Relay bookkeeping.
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  claimed_until   timestamptz,
  claimed_by      character varying,
  ordering_key    character varying NOT NULL DEFAULT ''
);

-- The seed's indexes (PRODUCTION-GUIDE "Add indexes"); event_id is unique as in the gem.
CREATE UNIQUE INDEX IF NOT EXISTS idx_outbox_event_id
  ON jetstream_outbox_events (event_id);
CREATE INDEX IF NOT EXISTS idx_outbox_status_created
  ON jetstream_outbox_events (status, created_at);
-- The claim query: unsent rows in id order (small: only unsent rows are in it).
CREATE INDEX IF NOT EXISTS idx_outbox_claim
  ON jetstream_outbox_events (id)
  WHERE status IN ('pending', 'publishing');
-- The ordered claim query: the oldest unsent row per ordering key.
CREATE INDEX IF NOT EXISTS idx_outbox_ordering_claim
  ON jetstream_outbox_events (ordering_key, id)
  WHERE status IN ('pending', 'publishing');
-- Retention: sent rows by age.
CREATE INDEX IF NOT EXISTS idx_outbox_sent_at
  ON jetstream_outbox_events (sent_at)
  WHERE status = 'sent';

-- Wake relays at commit: NOTIFY is delivered only when the inserting transaction commits, and
-- Postgres folds identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION jetstream_outbox_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('jetstream_outbox_events', '');
  RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jetstream_outbox_events_notify ON jetstream_outbox_events;
CREATE TRIGGER jetstream_outbox_events_notify
  AFTER INSERT ON jetstream_outbox_events
  FOR EACH STATEMENT EXECUTE FUNCTION jetstream_outbox_events_notify();
