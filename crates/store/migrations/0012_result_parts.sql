-- A clip verdict says which parts of its score flagged it. A nullable column: rows from before, and
-- verdicts written by a release that does not know it (during a rolling upgrade), hold none.
ALTER TABLE analysis_results ADD COLUMN parts jsonb;
COMMENT ON COLUMN analysis_results.parts IS 'For a clip verdict, each part of its score in units of its normal range (windows, band_spectrum, band_peaks, impulsiveness; above 1 is out of range), impulsiveness_side (duller or sharper than normal) and furthest (the part that set the score); NULL for shorter sound and rows from before migration 12.';
