-- Storage that can be pruned whole: what grows with time is partitioned by time, so that old data leaves by
-- dropping a partition (no vacuum, no bloat, no long lock) instead of by DELETE.
--
--   frames            by captured_at, daily by default (raw audio: dropped after days)
--   analysis_results  by captured_at, monthly (verdicts and band statistics: kept for years)
--   health_events     by at, monthly
--
-- The queues (analysis_jobs, search_outbox) are not partitioned: their rows leave within hours, by the
-- indexer or by bounded deletes, and a backlog can sit in any time slice, so no slice could be dropped whole.
--
-- Existing rows are not copied: each existing table becomes the first partition of its new parent, bounded
-- above by the end of the current slice, so this migration costs an index build and a scan per table, not a
-- rewrite. That partition is dropped like any other once everything in it is past its retention.
--
-- Upgrade note: unique keys of a partitioned table must include its partition key, so the verdicts' key
-- becomes (frame_id, model_version, captured_at). Listeners of the release before this one insert verdicts
-- with the old key and fail (their jobs are retried, not lost): replace listeners right after migrating.

-- Partitions of every parent with their bounds, parsed back from the catalog. A bound is printed and parsed
-- in the same session's time zone, so the round trip is exact.
CREATE VIEW auscult_partitions AS
SELECT parent.relname::text AS parent,
       child.relname::text  AS partition,
       child.oid            AS partition_oid,
       CASE WHEN b[1] = 'MINVALUE' THEN '-infinity'::timestamptz ELSE btrim(b[1], '''')::timestamptz END AS lower_bound,
       CASE WHEN b[2] = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE btrim(b[2], '''')::timestamptz END AS upper_bound
FROM pg_inherits i
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_class child ON child.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(pg_get_expr(child.relpartbound, child.oid), 'FROM \((.*)\) TO \((.*)\)') AS b
WHERE parent.relkind = 'p';
COMMENT ON VIEW auscult_partitions IS 'Time partitions of auscult''s partitioned tables, with their bounds.';

-- Start of the slice of `step` that holds `t`: UTC midnight for days, the first of the month for months,
-- multiples of `step` since the Unix epoch otherwise.
CREATE FUNCTION auscult_slice_start(step interval, t timestamptz) RETURNS timestamptz
    LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN extract(month FROM step) > 0 OR extract(year FROM step) > 0
                THEN date_trunc('month', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                ELSE date_bin(step, t, timestamptz '1970-01-01 00:00:00+00') END
$$;

-- Creates the partitions of `parent` needed to cover [from_ts, until_ts) in slices of `step`, filling gaps
-- around existing partitions whatever their bounds; returns the names created. Each new partition is built
-- beside the parent and attached, which takes only a SHARE UPDATE EXCLUSIVE lock on the parent: writers and
-- readers of the parent are never blocked. Idempotent.
CREATE FUNCTION auscult_ensure_partitions(parent regclass, step interval, from_ts timestamptz, until_ts timestamptz)
    RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    parent_name text := (SELECT relname FROM pg_class WHERE oid = parent);
    cursor_ts   timestamptz := auscult_slice_start(step, from_ts);
    slice_end   timestamptz;
    covering    timestamptz;
    next_lower  timestamptz;
    upper_ts    timestamptz;
    name        text;
BEGIN
    IF step <= interval '0' THEN
        RAISE EXCEPTION 'partition step must be positive, got %', step;
    END IF;
    WHILE cursor_ts < until_ts LOOP
        slice_end := auscult_slice_start(step, cursor_ts) + step;
        SELECT upper_bound INTO covering FROM auscult_partitions
            WHERE auscult_partitions.parent = parent_name AND lower_bound <= cursor_ts AND upper_bound > cursor_ts;
        IF covering IS NOT NULL THEN
            cursor_ts := covering;
            CONTINUE;
        END IF;
        SELECT min(lower_bound) INTO next_lower FROM auscult_partitions
            WHERE auscult_partitions.parent = parent_name AND lower_bound > cursor_ts;
        upper_ts := least(slice_end, coalesce(next_lower, slice_end));
        name := format('%s_p%s', parent_name, to_char(cursor_ts AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI'));
        EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                       name, parent);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, name, cursor_ts, upper_ts);
        RETURN NEXT name;
        cursor_ts := upper_ts;
    END LOOP;
END $$;
COMMENT ON FUNCTION auscult_ensure_partitions IS 'Creates the missing time partitions of a parent over a range; idempotent.';

-- Turns `old_name` (already renamed away from the parent's name, its unique keys and identity dropped) into
-- the first partition of `parent`, covering everything before the end of the current slice of `step`. An empty
-- table is dropped instead: the partitions created next cover the present.
CREATE FUNCTION pg_temp.adopt_as_partition(parent regclass, old_name text, time_column text, step interval)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    newest timestamptz;
    upper_ts timestamptz;
    last_id bigint;
BEGIN
    EXECUTE format('SELECT max(%I) FROM %I', time_column, old_name) INTO newest;
    IF newest IS NULL THEN
        EXECUTE format('DROP TABLE %I', old_name);
        RETURN;
    END IF;
    upper_ts := auscult_slice_start(step, greatest(newest, now())) + step;
    -- With this constraint in place, ATTACH needs no scan of its own.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I IS NOT NULL AND %I < %L)',
                   old_name, old_name || '_bound', time_column, time_column, upper_ts);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                   parent, old_name, upper_ts);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', old_name, old_name || '_bound');
    -- Ids continue after the adopted rows.
    EXECUTE format('SELECT max(id) FROM %I', old_name) INTO last_id;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN id RESTART WITH %s', parent, last_id + 1);
END $$;

-- Samples per channel of a stored frame, whatever its encoding. A FLAC stream records its length in its
-- STREAMINFO block: 36 bits starting in the 22nd byte (read as a slice; `samples` is stored uncompressed, so
-- no more than those bytes is fetched).
CREATE FUNCTION auscult_sample_frames(encoding text, samples bytea, channels smallint) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE encoding
        WHEN 'flac' THEN ('x' || encode(substring(samples FROM 22 FOR 5), 'hex'))::bit(40)::bigint & 68719476735
        WHEN 'f32le' THEN length(samples) / (4 * channels)
        ELSE length(samples) / (2 * channels) END
$$;

-- Results and jobs outlive or outrun their frames: their references become plain columns.
ALTER TABLE analysis_jobs DROP CONSTRAINT analysis_jobs_frame_id_fkey;
ALTER TABLE analysis_results DROP CONSTRAINT analysis_results_frame_id_fkey;

-- frames -----------------------------------------------------------------------------------------------------
ALTER TABLE frames RENAME TO frames_before_partitioning;
-- Frames of 16-bit PCM may be stored FLAC-compressed (lossless; about half the size on machine sound).
ALTER TABLE frames_before_partitioning DROP CONSTRAINT frames_encoding_check,
    ADD CONSTRAINT frames_encoding_check CHECK (encoding IN ('pcm_s16le', 'f32le', 'flac'));
-- The parent's own foreign key to devices covers the adopted rows once they are attached.
ALTER TABLE frames_before_partitioning
    DROP CONSTRAINT frames_pkey, DROP CONSTRAINT frames_key, DROP CONSTRAINT frames_device_id_fkey;
ALTER TABLE frames_before_partitioning ALTER COLUMN id DROP IDENTITY;
DROP INDEX frames_sensor_time_idx;

-- Same columns and checks (with the same names: ATTACH matches checks by name) as before.
CREATE TABLE frames (LIKE frames_before_partitioning INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)
    PARTITION BY RANGE (captured_at);
ALTER TABLE frames
    ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY,
    ADD PRIMARY KEY (id, captured_at),
    -- Unique per partition only (PostgreSQL's rule for partitioned tables). Ingest makes the frame key unique
    -- across partitions: it serialises writers per sensor stream and looks up in every partition the keys
    -- that may be stored (see frame_streams below and frames.rs); this index serves that lookup.
    ADD CONSTRAINT frames_key UNIQUE (device_id, sensor_id, stream_epoch, seq, captured_at),
    ADD CONSTRAINT frames_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices;
CREATE INDEX frames_sensor_time_idx ON frames (device_id, sensor_id, captured_at);
COMMENT ON TABLE frames IS 'Accepted microphone frames, exactly once per (device, sensor, epoch, seq); the source of truth. Partitioned by capture time.';
SELECT pg_temp.adopt_as_partition('frames', 'frames_before_partitioning', 'captured_at', interval '1 day');
SELECT auscult_ensure_partitions('frames', interval '1 day', now() - interval '8 days', now() + interval '3 days');

-- Each stream's highest stored sequence number (its high-water mark), raised in every transaction that stores
-- its frames. A key above it cannot be stored yet, so ingest looks up in the partitions only the keys at or
-- below it (resends, reused numbers): a live stream's frames cost no lookup however many partitions exist.
CREATE TABLE frame_streams (
    device_id        text NOT NULL,
    sensor_id        text NOT NULL,
    stream_epoch     bigint NOT NULL,
    max_seq          bigint NOT NULL,
    -- Pruned once every frame it covers has left with its partition.
    last_captured_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, sensor_id, stream_epoch)
);
CREATE INDEX frame_streams_last_captured_idx ON frame_streams (last_captured_at);
COMMENT ON TABLE frame_streams IS 'Highest stored seq per stream: keys above it need no duplicate lookup.';
INSERT INTO frame_streams
SELECT device_id, sensor_id, stream_epoch, max(seq), max(captured_at) FROM frames GROUP BY 1, 2, 3;

-- Audio kept past the raw-audio retention because a verdict or an alert points at it: copied out of a frames
-- partition before that partition is dropped, pruned by bounded deletes once past its own retention.
CREATE TABLE frames_kept (LIKE frames INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);
ALTER TABLE frames_kept ADD PRIMARY KEY (id), ADD COLUMN kept_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX frames_kept_sensor_time_idx ON frames_kept (device_id, sensor_id, captured_at);
CREATE INDEX frames_kept_time_idx ON frames_kept (captured_at);
COMMENT ON TABLE frames_kept IS 'Audio around anomalous verdicts and alerts, kept after its frames partition was dropped.';

-- analysis_results -------------------------------------------------------------------------------------------
ALTER TABLE analysis_results RENAME TO analysis_results_before_partitioning;
ALTER TABLE analysis_results_before_partitioning
    DROP CONSTRAINT analysis_results_pkey, DROP CONSTRAINT analysis_results_id_key;
ALTER TABLE analysis_results_before_partitioning ALTER COLUMN id DROP IDENTITY;
DROP INDEX analysis_results_stream_idx, analysis_results_time_idx;

CREATE TABLE analysis_results (LIKE analysis_results_before_partitioning INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (captured_at);
ALTER TABLE analysis_results ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY,
    ADD PRIMARY KEY (frame_id, model_version, captured_at);
-- The search outbox's handle: unique by construction (the identity), indexed for the indexer's lookups.
CREATE INDEX analysis_results_id_idx ON analysis_results (id);
CREATE INDEX analysis_results_stream_idx ON analysis_results (device_id, sensor_id, stream_epoch, seq);
CREATE INDEX analysis_results_time_idx ON analysis_results (device_id, sensor_id, captured_at);
-- What retention looks up to keep the audio around anomalous verdicts.
CREATE INDEX analysis_results_anomalous_idx ON analysis_results (captured_at) WHERE anomalous;
COMMENT ON TABLE analysis_results IS 'Verdicts, one per frame and model version, with the latencies that produced them. Partitioned by capture time.';
SELECT pg_temp.adopt_as_partition('analysis_results', 'analysis_results_before_partitioning', 'captured_at', interval '1 month');
SELECT auscult_ensure_partitions('analysis_results', interval '1 month', now() - interval '8 days', now() + interval '1 month');

-- health_events ----------------------------------------------------------------------------------------------
ALTER TABLE health_events RENAME TO health_events_before_partitioning;
ALTER TABLE health_events_before_partitioning DROP CONSTRAINT health_events_pkey;
ALTER TABLE health_events_before_partitioning ALTER COLUMN id DROP IDENTITY;
DROP INDEX health_events_at_idx;

CREATE TABLE health_events (LIKE health_events_before_partitioning INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (at);
ALTER TABLE health_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY, ADD PRIMARY KEY (id, at);
CREATE INDEX health_events_at_idx ON health_events (at);
COMMENT ON TABLE health_events IS 'Pipeline health: sensors going silent, changing rate, and recovering. Partitioned by time.';
SELECT pg_temp.adopt_as_partition('health_events', 'health_events_before_partitioning', 'at', interval '1 month');
SELECT auscult_ensure_partitions('health_events', interval '1 month', now() - interval '8 days', now() + interval '1 month');

-- Queues ------------------------------------------------------------------------------------------------------
-- Done jobs are pruned within hours, oldest first.
CREATE INDEX analysis_jobs_done_idx ON analysis_jobs (updated_at) WHERE state = 'done';
CREATE INDEX alert_deliveries_created_idx ON alert_deliveries (created_at);

-- The retention policy the last maintenance pass applied, and what that pass did: what `auscult retention
-- status` reports, whoever runs it.
CREATE TABLE lifecycle_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    policy     jsonb NOT NULL,
    last_pass  jsonb NOT NULL,
    run_by     text NOT NULL,
    ran_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lifecycle_state IS 'The retention policy in force and the outcome of the last maintenance pass.';
