-- A frame is judged with the verdicts of the frames before it in its stream. When a backlog is worked by
-- several claims at once, a claim must not take a frame of a stream another claim is still working, or the
-- frame would be judged before its predecessors' verdicts are stored, with less history than it would have
-- had live. Jobs carry their frame's stream key, so that a claim sees which streams are held (by a job
-- `running` under a live lease) and leaves them alone.
ALTER TABLE analysis_jobs
    ADD COLUMN device_id text,
    ADD COLUMN sensor_id text,
    ADD COLUMN stream_epoch int8,
    ADD COLUMN seq int8;
UPDATE analysis_jobs j
SET device_id = f.device_id, sensor_id = f.sensor_id, stream_epoch = f.stream_epoch, seq = f.seq
FROM frames f
WHERE f.id = j.frame_id AND j.state IN ('queued', 'running');
CREATE INDEX analysis_jobs_held_streams_idx ON analysis_jobs (device_id, sensor_id, stream_epoch)
    WHERE state = 'running';
COMMENT ON COLUMN analysis_jobs.seq IS 'The frame''s stream key (device_id, sensor_id, stream_epoch) and seq, copied from frames: claims take a stream only while no other claim holds it.';
