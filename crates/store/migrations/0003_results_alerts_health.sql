-- What the listener writes: verdicts, alerts and their webhook deliveries, and the health of every sensor.

-- Which machine a sensor listens to, so that its frames are judged against that machine's normal. Sensors
-- without a row are judged as the machine the model recognises.
CREATE TABLE sensor_machines (
    device_id    text NOT NULL REFERENCES devices ON DELETE CASCADE,
    sensor_id    text NOT NULL CHECK (length(sensor_id) BETWEEN 1 AND 128),
    machine_type text NOT NULL CHECK (length(machine_type) BETWEEN 1 AND 128),
    machine_id   text NOT NULL CHECK (length(machine_id) BETWEEN 1 AND 128),
    PRIMARY KEY (device_id, sensor_id)
);
COMMENT ON TABLE sensor_machines IS 'The machine each sensor records; its frames are judged against that machine''s profile.';

-- A job whose attempt failed waits before it is claimed again (backoff), instead of spinning.
ALTER TABLE analysis_jobs ADD COLUMN not_before timestamptz NOT NULL DEFAULT '-infinity';
CREATE INDEX analysis_jobs_dead_idx ON analysis_jobs (updated_at) WHERE state = 'dead';

-- One verdict per frame and model version: re-scoring a frame with the same model is a no-op, scoring it
-- with a new model adds a row. Written in the transaction that completes the frame's job.
CREATE TABLE analysis_results (
    -- A single-column handle for the search outbox.
    id                     bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    frame_id               bigint NOT NULL REFERENCES frames ON DELETE CASCADE,
    model_version          text NOT NULL,
    device_id              text NOT NULL,
    sensor_id              text NOT NULL,
    stream_epoch           bigint NOT NULL,
    seq                    bigint NOT NULL,
    captured_at            timestamptz NOT NULL,
    stored_at              timestamptz NOT NULL,
    scored_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    anomalous              boolean NOT NULL,
    anomaly_score          double precision NOT NULL,
    threshold              double precision NOT NULL,
    class                  text NOT NULL,
    class_probability      real NOT NULL,
    -- {"valve/section_00/pat_00/normal": 0.93, …}
    probabilities          jsonb NOT NULL,
    profile                text NOT NULL,
    profile_scope          text NOT NULL,
    -- [{"low_hz", "high_hz", "measure", "departure_db", "z"}, …], most deviating first.
    top_bands              jsonb NOT NULL,
    windows                integer NOT NULL,
    history_windows        integer NOT NULL,
    -- Judged over a clip's length; alerts count only these.
    clip                   boolean NOT NULL,
    -- What the next frames of the stream are judged with (their history).
    summary_windows        integer NOT NULL,
    mean_window_score      double precision NOT NULL,
    band_means             real[] NOT NULL,
    band_peaks             real[] NOT NULL,
    latency_from_capture_ms double precision NOT NULL,
    latency_from_storage_ms double precision NOT NULL,
    PRIMARY KEY (frame_id, model_version)
);
CREATE INDEX analysis_results_stream_idx ON analysis_results (device_id, sensor_id, stream_epoch, seq);
CREATE INDEX analysis_results_time_idx ON analysis_results (device_id, sensor_id, captured_at);
COMMENT ON TABLE analysis_results IS 'Verdicts, one per frame and model version, with the latencies that produced them.';

-- An alert is one episode of a machine sounding wrong: opened when K of its last M clip verdicts are anomalous,
-- resolved when they clear. At most one is firing per sensor, whatever the number of listeners.
CREATE TABLE alerts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id         text NOT NULL,
    sensor_id         text NOT NULL,
    machine           text NOT NULL,
    state             text NOT NULL CHECK (state IN ('firing', 'resolved')),
    opened_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at       timestamptz,
    first_frame_id    bigint NOT NULL,
    last_frame_id     bigint NOT NULL,
    anomalous_windows integer NOT NULL,
    window_count      integer NOT NULL,
    peak_score        double precision NOT NULL,
    threshold         double precision NOT NULL,
    model_version     text NOT NULL,
    top_bands         jsonb NOT NULL
);
CREATE UNIQUE INDEX alerts_one_firing_idx ON alerts (device_id, sensor_id) WHERE state = 'firing';
CREATE INDEX alerts_opened_idx ON alerts (opened_at);
COMMENT ON TABLE alerts IS 'Episodes of anomalous sound per sensor: K of the last M verdicts anomalous, until they clear.';

-- Webhook deliveries to make, written with the alert change they announce (an outbox): a crash between
-- the change and the POST loses nothing, and receivers de-duplicate on (alert_id, event).
CREATE TABLE alert_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id        bigint NOT NULL REFERENCES alerts ON DELETE CASCADE,
    event           text NOT NULL CHECK (event IN ('fired', 'resolved')),
    webhook         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (alert_id, event, webhook)
);
CREATE INDEX alert_deliveries_pending_idx ON alert_deliveries (next_attempt_at) WHERE delivered_at IS NULL;
COMMENT ON TABLE alert_deliveries IS 'Alert events to POST to webhooks, retried until delivered or given up.';

-- How each sensor has been sending: updated as its frames are claimed, watched for silence and for a rate
-- that departs from its norm.
CREATE TABLE sensor_health (
    device_id          text NOT NULL,
    sensor_id          text NOT NULL,
    state              text NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'silent', 'rate_changed')),
    first_seen_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_captured_at   timestamptz NOT NULL,
    last_received_at   timestamptz NOT NULL,
    frames             bigint NOT NULL DEFAULT 0,
    -- Seconds between frames: the usual (slow average) and the recent (fast average).
    usual_interval_s   double precision,
    recent_interval_s  double precision,
    state_since        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, sensor_id)
);
COMMENT ON TABLE sensor_health IS 'Per-sensor frame rate and last activity, watched for silence and rate changes.';

-- Seconds per frame when the newest capture time advanced from `previous` to `newest` over `frames` frames.
CREATE FUNCTION seconds_per_frame(newest timestamptz, previous timestamptz, frames bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE AS $$ SELECT extract(epoch FROM newest - previous)::double precision / greatest(frames, 1) $$;

CREATE TABLE health_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL,
    sensor_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('silent', 'rate_changed', 'recovered')),
    detail      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX health_events_at_idx ON health_events (at);
COMMENT ON TABLE health_events IS 'Pipeline health: sensors going silent, changing rate, and recovering.';

-- Wakes webhook senders when an alert changes.
CREATE FUNCTION notify_alert_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('auscult_alerts', NEW.alert_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER alert_deliveries_notify AFTER INSERT ON alert_deliveries
    FOR EACH ROW EXECUTE FUNCTION notify_alert_delivery();
