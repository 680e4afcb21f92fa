-- What a stream remembers of each scored frame now includes its waveform's peaks (one per second), energy and length, so
-- that a live stream's crest factor (peak over RMS, independent of the microphone's gain) is judged over a
-- clip's length exactly as a recorded clip's is. Rows from before have none; a stream that reaches back to
-- them is judged without the crest factor until they pass out of its history.
ALTER TABLE analysis_results
    ADD COLUMN waveform_peaks real[],
    ADD COLUMN waveform_energy float8,
    ADD COLUMN waveform_samples bigint;
COMMENT ON COLUMN analysis_results.waveform_peaks IS 'Largest absolute sample of each second of the frame (for the stream''s crest factor).';
COMMENT ON COLUMN analysis_results.waveform_energy IS 'Sum of the frame''s squared samples.';
COMMENT ON COLUMN analysis_results.waveform_samples IS 'Samples the peak and energy were measured over.';
