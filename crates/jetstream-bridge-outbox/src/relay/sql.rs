//! The relay's SQL statements and the rows they return.
//!
//! **A claim is a HOT update.** It writes only the lease (`claimed_until`), the claim token
//! (`claimed_by`) and `updated_at`, none of which is indexed, and leaves `status` at
//! `pending`: PostgreSQL then writes the new row version next to the old one (the table's
//! `fillfactor` keeps room for it) without touching any index. Marking the row sent is the
//! event's only index-writing update. A claimed row is `pending` with a live lease
//! (`claimed_until > now()`); `publishing` rows (written by earlier versions or other tools)
//! are claimable under the same lease rule, and a claim turns them back into `pending`.
//!
//! Every statement after a claim is fenced by it: `claimed_by = <claim token>` (a fresh token
//! per claim) and `status = 'pending'`. Rows whose lease expired and that another relay
//! claimed since (new token), or that were marked or released by anyone meanwhile (token
//! cleared), are left alone.

use diesel::sql_types::{BigInt, Integer, Jsonb, Text};
use diesel::QueryableByName;
use serde_json::Value;

/// The claim's `UPDATE … SET`: lease `$1` seconds, token `$2`.
macro_rules! claim_set {
    () => {
        "UPDATE jetstream_outbox_events o \
         SET status = 'pending', claimed_until = now() + make_interval(secs => $1), \
             claimed_by = $2, updated_at = now() \
         FROM (SELECT id FROM jetstream_outbox_events WHERE "
    };
}

/// Unsent, not leased (or the lease ran out), not backing off, subject not muted (`$4`); then
/// `$3` rows in id order, skipping rows another claim is locking right now.
macro_rules! claimable {
    () => {
        "status IN ('pending', 'publishing') \
         AND (claimed_until IS NULL OR claimed_until < now()) \
         AND next_attempt_at <= now() \
         AND subject <> ALL($4) \
         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
         WHERE o.id = c.id \
         RETURNING o.id, o.event_id, o.subject, o.payload::text AS payload, o.headers, \
             o.attempts"
    };
}

/// Claims up to `$3` rows in id order under the token `$2` for `$1` seconds, skipping the
/// subjects in `$4`. The conditions are re-checked on the locked row version, so a row another
/// relay claimed after this statement's snapshot is skipped.
pub(super) const CLAIM: &str = concat!(claim_set!(), claimable!());

/// As [`CLAIM`], but only the oldest unsent row of each ordering key is claimable: a key whose
/// head is leased (or backing off) is skipped as a whole.
pub(super) const CLAIM_ORDERED: &str = concat!(
    claim_set!(),
    "id IN (SELECT DISTINCT ON (ordering_key) id FROM jetstream_outbox_events \
            WHERE status IN ('pending', 'publishing') ORDER BY ordering_key, id) AND ",
    claimable!()
);

/// Extends the lease of the rows still held by this claim; returns them.
pub(super) const RENEW: &str = "\
UPDATE jetstream_outbox_events SET claimed_until = now() + make_interval(secs => $1), \
    updated_at = now() \
WHERE id = ANY($2) AND claimed_by = $3 AND status = 'pending' \
RETURNING id";

/// `status = 'pending'` implies `status <> 'sent'`: a row is never marked sent twice.
pub(super) const MARK_SENT: &str = "\
UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now(), updated_at = now(), \
    claimed_until = NULL, claimed_by = NULL, last_error = NULL \
WHERE id = ANY($1) AND claimed_by = $2 AND status = 'pending'";

/// Back to claimable without counting an attempt (lease and token cleared), after `$3` seconds.
pub(super) const RELEASE: &str = "\
UPDATE jetstream_outbox_events SET claimed_until = NULL, claimed_by = NULL, \
    next_attempt_at = now() + make_interval(secs => $3), updated_at = now() \
WHERE id = ANY($1) AND claimed_by = $2 AND status = 'pending'";

/// Counts a failed attempt against each row (error and back-off per row); `failed` at `$4`
/// attempts. Returns the new statuses.
pub(super) const MARK_FAILED: &str = "\
UPDATE jetstream_outbox_events o SET \
    attempts = o.attempts + 1, \
    status = CASE WHEN o.attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END, \
    next_attempt_at = now() + make_interval(secs => f.delay), \
    last_error = f.err, claimed_until = NULL, claimed_by = NULL, updated_at = now() \
FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, err, delay) \
WHERE o.id = f.id AND o.claimed_by = $5 AND o.status = 'pending' \
RETURNING o.status";

/// A claimed row: what the relay needs to publish it.
#[derive(QueryableByName)]
pub(super) struct ClaimedRow {
    #[diesel(sql_type = BigInt)]
    pub(super) id: i64,
    #[diesel(sql_type = Text)]
    pub(super) event_id: String,
    #[diesel(sql_type = Text)]
    pub(super) subject: String,
    /// The stored JSON text, exactly as written at enqueue.
    #[diesel(sql_type = Text)]
    pub(super) payload: String,
    #[diesel(sql_type = Jsonb)]
    pub(super) headers: Value,
    #[diesel(sql_type = Integer)]
    pub(super) attempts: i32,
}

#[derive(QueryableByName)]
pub(super) struct StatusRow {
    #[diesel(sql_type = Text)]
    pub(super) status: String,
}

#[derive(QueryableByName)]
pub(super) struct IdRow {
    #[diesel(sql_type = BigInt)]
    pub(super) id: i64,
}
