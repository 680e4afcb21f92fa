-- Indexers claim outbox rows with a lease instead of holding their row locks through the call to
-- Elasticsearch: a claim pushes `not_before` to the end of the lease and stamps the rows with the claim's
-- random token. Only the holder of the token settles or releases them; if it dies, the rows are due again
-- when the lease ends, and a late settlement by the old holder touches nothing.
ALTER TABLE search_outbox ADD COLUMN claim bigint;
COMMENT ON COLUMN search_outbox.claim IS 'Token of the indexer claim holding the row until not_before; NULL when unclaimed.';
