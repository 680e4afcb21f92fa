-- An attempt that failed while no analysis replica could be reached at all (a network fault, every replica
-- down) is not the frame's fault and does not use up one of its attempts; it is counted here instead, so
-- that a frame which takes every replica down with it (indistinguishable from an outage) still ends, dead,
-- after jobs.max_outage_retries such rounds plus its attempts.
ALTER TABLE analysis_jobs ADD COLUMN outage_retries integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN analysis_jobs.outage_retries IS 'Rounds this job failed while no analysis replica answered (not counted as attempts, up to jobs.max_outage_retries).';
