-- Indexers claim outbox rows with a lease instead of holding their row locks through the call to
-- Elasticsearch: a claim pushes `not_before` to the end of the lease and stamps the rows with the claim's
-- random token. Only the holder of the token settles or releases them; if it dies, the rows are due again
-- when the lease ends, and a late settlement by the old holder touches nothing.
ALTER TABLE search_outbox ADD COLUMN claim bigint;
COMMENT ON COLUMN search_outbox.claim IS 'Token of the indexer claim holding the row until not_before; NULL when unclaimed.';

-- Indexing into Elasticsearch is a choice, made by running listeners with `elastic.urls` (they switch it on)
-- and undone by `auscult elastic disable`. While it is off, writers queue nothing: without an indexer the
-- outbox would only grow. A database that has projected before (it was refilled once) keeps indexing; one
-- that never had an indexer drops the rows it queued for none (a later switch-on queues everything within
-- retention again).
ALTER TABLE search_projection ADD COLUMN indexing boolean NOT NULL DEFAULT false;
UPDATE search_projection SET indexing = refilled_at IS NOT NULL;
DELETE FROM search_outbox WHERE NOT (SELECT indexing FROM search_projection);
COMMENT ON COLUMN search_projection.indexing IS 'Whether writers queue documents in search_outbox (set by indexers, cleared by auscult elastic disable).';

-- A firing alert changes while it fires (its last frame, its anomalous windows, its peak score), and its
-- search document must follow: every change raises the alert's revision, which is the document's external
-- version, so the newest state always wins and a late resend of an older one is refused (409). Existing
-- alerts keep the versions they were indexed with (1 firing, 2 resolved).
ALTER TABLE alerts ADD COLUMN revision bigint NOT NULL DEFAULT 1;
UPDATE alerts SET revision = 2 WHERE state = 'resolved';
COMMENT ON COLUMN alerts.revision IS 'Raised by every change; the version of the alert''s search document.';
