-- Cheaper relaying (jetstream-bridge-outbox): a relay's claim writes only unindexed columns
-- (`claimed_until`, `claimed_by`, `updated_at`; `status` stays `pending`), so PostgreSQL can make
-- it a HOT update — a new row version on the same page and no index entry — if the page has
-- room for it. A fill factor of 50 leaves room for one claimed version of every row on its
-- page; marking the row sent is then the event's only index-writing update. Applies to pages
-- written from now on (no rewrite).
ALTER TABLE jetstream_outbox_events SET (fillfactor = 50);
