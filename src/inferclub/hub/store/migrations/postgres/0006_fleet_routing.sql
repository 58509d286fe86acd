-- Failover: how many providers a request tried, and the model that served it when a fallback
-- model stood in for the one asked (`model` stays what the client asked for).
ALTER TABLE requests ADD COLUMN attempts INTEGER;
ALTER TABLE requests ADD COLUMN served_model TEXT;

-- Fallback models: per user, the model to serve instead of `model` when no provider can serve
-- it now (`qwen3-32b` -> `qwen3-8b`). One fallback per model; no chains.
CREATE TABLE model_fallbacks (
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    model       TEXT NOT NULL,
    fallback    TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, model)
);
