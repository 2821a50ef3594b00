-- The idempotent inbox (jetstream-bridge-inbox). Columns of the Ruby gem's template
-- (upstream-gem.md §2); see docs/CONSUMER.md. Timestamps are timestamptz like the outbox's.
CREATE TABLE IF NOT EXISTS jetstream_inbox_events (
  id                  bigserial PRIMARY KEY,
  event_id            character varying NOT NULL,
  event_type          character varying NOT NULL,
  resource_type       character varying,
  resource_id         character varying,
  -- The received envelope as a real JSON object (the gem stored its JSON text in a text column).
  payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
  subject             character varying,
  -- The message headers as a JSON object {name: value} (first value of each name).
  headers             jsonb NOT NULL DEFAULT '{}'::jsonb,
  stream              character varying,
  stream_seq          bigint,
  deliveries          integer,
  status              character varying NOT NULL DEFAULT 'received'
                      CHECK (status IN ('received', 'processing', 'processed', 'failed')),
  error_message       text,
  processing_attempts integer NOT NULL DEFAULT 0,
  received_at         timestamptz NOT NULL DEFAULT now(),
  processed_at        timestamptz,
  failed_at           timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The seed's and the gem's indexes: event_id unique (the dedupe key), the stream position
-- unique where known, status and created_at for operators.
CREATE UNIQUE INDEX IF NOT EXISTS idx_inbox_event_id
  ON jetstream_inbox_events (event_id);
CREATE UNIQUE INDEX IF NOT EXISTS idx_inbox_stream_seq
  ON jetstream_inbox_events (stream, stream_seq)
  WHERE stream IS NOT NULL AND stream_seq IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_inbox_status
  ON jetstream_inbox_events (status);
CREATE INDEX IF NOT EXISTS idx_inbox_created_at
  ON jetstream_inbox_events (created_at);
-- Retention: processed rows by age.
CREATE INDEX IF NOT EXISTS idx_inbox_processed_at
  ON jetstream_inbox_events (processed_at)
  WHERE status = 'processed';
