-- The model registry: every model version the analysis service may load, and which one is active.
-- PostgreSQL holds the model file itself, so every replica loads exactly the bytes that were published,
-- wherever it runs; rolling back is activating an older version.
CREATE TABLE models (
    version      text PRIMARY KEY CHECK (length(version) BETWEEN 1 AND 128),
    -- SHA-256 of the file: publishing the same version twice is a no-op only if the bytes agree.
    sha256       text NOT NULL CHECK (length(sha256) = 64),
    file         bytea NOT NULL,
    -- What operators want to see without loading the file: classes, training fingerprint, validation.
    summary      jsonb NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    active       boolean NOT NULL DEFAULT false
);
-- Model files are already compact; compressing them again only costs CPU.
ALTER TABLE models ALTER COLUMN file SET STORAGE EXTERNAL;
-- At most one active model.
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active;
