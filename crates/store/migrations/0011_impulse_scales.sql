-- The waveform summary of a scored frame now holds, for each second, the loudest frame's RMS at each of
-- the model's impulse scales (1, 25, 100, 400 and 1600 samples; at one sample, the largest absolute
-- sample). The column is unchanged; rows written before hold one value a second, and a stream that reaches
-- back to them is judged without impulsiveness until they pass out of its history.
COMMENT ON COLUMN analysis_results.waveform_peaks IS 'Per second of the frame, the RMS of its loudest frame at each impulse scale (1, 25, 100, 400, 1600 samples), second by second; rows from before migration 11 hold one largest absolute sample per second.';
COMMENT ON COLUMN analysis_results.waveform_samples IS 'Samples the peaks and energy were measured over.';
