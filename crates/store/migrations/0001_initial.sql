-- Devices, their tokens, stored frames and the work that stored frames create.

-- A gateway device allowed to send frames. Frames reference it, so a frame can never name an unknown device.
CREATE TABLE devices (
    device_id   text PRIMARY KEY CHECK (length(device_id) BETWEEN 1 AND 128),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE devices IS 'Gateway devices allowed to send frames.';

-- Bearer tokens, stored as SHA-256 digests: the database never holds a usable token. Tokens are 256-bit random
-- values, so a fast hash is enough (there is nothing to brute-force the way there is with passwords).
CREATE TABLE device_tokens (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    device_id    text NOT NULL REFERENCES devices ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX device_tokens_device_idx ON device_tokens (device_id);
COMMENT ON TABLE device_tokens IS 'SHA-256 digests of device bearer tokens; a token admits frames of its own device only.';

-- Every accepted frame, once. The unique key is what makes resends harmless: a gateway that did not get its
-- acknowledgement sends again, and the second insert does nothing.
CREATE TABLE frames (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id      text NOT NULL REFERENCES devices,
    sensor_id      text NOT NULL CHECK (length(sensor_id) BETWEEN 1 AND 128),
    stream_epoch   bigint NOT NULL CHECK (stream_epoch >= 0),
    seq            bigint NOT NULL CHECK (seq >= 0),
    captured_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    sample_rate_hz integer NOT NULL CHECK (sample_rate_hz BETWEEN 1000 AND 192000),
    channels       smallint NOT NULL CHECK (channels BETWEEN 1 AND 16),
    encoding       text NOT NULL CHECK (encoding IN ('pcm_s16le', 'f32le')),
    samples        bytea NOT NULL,
    samples_sha256 bytea NOT NULL CHECK (length(samples_sha256) = 32),
    rms_dbfs       real NOT NULL,
    peak_dbfs      real NOT NULL,
    crest_factor   real NOT NULL,
    CONSTRAINT frames_key UNIQUE (device_id, sensor_id, stream_epoch, seq)
);
-- Audio barely compresses; EXTERNAL skips pglz's attempt and keeps slices of samples cheap to read.
ALTER TABLE frames ALTER COLUMN samples SET STORAGE EXTERNAL;
CREATE INDEX frames_sensor_time_idx ON frames (device_id, sensor_id, captured_at);
COMMENT ON TABLE frames IS 'Accepted microphone frames, exactly once per (device, sensor, epoch, seq); the source of truth.';

-- One analysis job per stored frame, written in the frame's own transaction so that no frame can be stored
-- without its job. LISTEN/NOTIFY only wakes the listener; this table is the work.
CREATE TABLE analysis_jobs (
    frame_id         bigint PRIMARY KEY REFERENCES frames ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analysis_jobs_pending_idx ON analysis_jobs (frame_id) WHERE state IN ('queued', 'running');
COMMENT ON TABLE analysis_jobs IS 'Work queue: one job per stored frame, claimed by listeners with FOR UPDATE SKIP LOCKED.';

-- Documents to project into Elasticsearch, written in the same transaction as what they describe (the
-- transactional outbox), so the search index can always be rebuilt to match PostgreSQL.
CREATE TABLE search_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL,
    ref_id     bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE search_outbox IS 'Pending Elasticsearch documents (kind + id of the source row), drained by the indexer.';
