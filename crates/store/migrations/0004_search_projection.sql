-- The Elasticsearch projection: retries of the search outbox, documents Elasticsearch refused, and the
-- identity of this database's projection, so that a cluster that lost it is noticed and refilled.

-- A document Elasticsearch could not take for now (429, 5xx) waits before it is sent again; the rest of the
-- outbox flows on meanwhile.
ALTER TABLE search_outbox
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN not_before timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN last_error text;
CREATE INDEX search_outbox_retry_idx ON search_outbox (not_before) WHERE attempts > 0;
-- A refill queues only what is not queued already.
CREATE INDEX search_outbox_ref_idx ON search_outbox (kind, ref_id);

-- Documents Elasticsearch refused for good (400, 404: a mapping conflict, a rejected value), with its reason.
-- They leave the outbox so that one bad document never holds the others back; `auscult elastic replay`
-- queues them again once the cause is fixed.
CREATE TABLE search_dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    ref_id      bigint NOT NULL,
    index_name  text NOT NULL,
    document_id text NOT NULL,
    status      integer NOT NULL,
    error_type  text NOT NULL,
    reason      text NOT NULL,
    attempts    integer NOT NULL,
    queued_at   timestamptz NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX search_dead_letters_failed_idx ON search_dead_letters (failed_at);
COMMENT ON TABLE search_dead_letters IS 'Search documents Elasticsearch refused (400/404), with the reason; replayable.';

-- One row: the identity this database writes into the cluster as a marker document. A cluster without the
-- marker has lost the projection (or never had it) and is refilled from PostgreSQL.
CREATE TABLE search_projection (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    projection_id text NOT NULL DEFAULT gen_random_uuid()::text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    refilled_at   timestamptz
);
INSERT INTO search_projection DEFAULT VALUES;
COMMENT ON TABLE search_projection IS 'Identity of this database''s Elasticsearch projection (its marker document).';
