-- A frame's trace follows it through the job table: ingest stores the W3C `traceparent` of the span that
-- received the frame beside its job, and the listener that claims the job continues that trace. NULL when
-- traces are not exported or the frame's trace was not sampled: the column costs nothing then.
ALTER TABLE analysis_jobs ADD COLUMN trace_parent text
    CONSTRAINT analysis_jobs_trace_parent_len CHECK (trace_parent IS NULL OR length(trace_parent) = 55);
COMMENT ON COLUMN analysis_jobs.trace_parent IS 'W3C traceparent of the ingest span that stored the frame, when its trace is exported.';
