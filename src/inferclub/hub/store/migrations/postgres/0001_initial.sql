-- Initial schema, PostgreSQL dialect of ../0001_initial.sql (same tables, same meaning).
-- Request history is metadata only: no prompt or output content, ever. Ids are identity
-- columns: a sequence never hands out a number twice, so an id is never reused after a delete.
CREATE TABLE users (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login       TEXT NOT NULL UNIQUE,
    github_id   BIGINT UNIQUE,
    created_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE api_keys (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,   -- HMAC-SHA256(pepper, key), never the key itself
    created_at    DOUBLE PRECISION NOT NULL,
    last_used_at  DOUBLE PRECISION,
    revoked_at    DOUBLE PRECISION
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE INDEX api_keys_prefix ON api_keys(prefix);

CREATE TABLE providers (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    callback_url       TEXT NOT NULL,
    agent_version      TEXT NOT NULL DEFAULT '',
    -- JSON as text, not JSONB: jsonb refuses \u0000 and lone surrogate escapes, and a
    -- health report quoting an engine's error must never make a heartbeat fail.
    health             TEXT NOT NULL DEFAULT '{}',
    created_at         DOUBLE PRECISION NOT NULL,
    last_heartbeat_at  DOUBLE PRECISION NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE services (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id  BIGINT NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    type         TEXT NOT NULL,
    engine       TEXT NOT NULL,
    features     TEXT NOT NULL DEFAULT '[]',
    UNIQUE (provider_id, name)
);

CREATE TABLE service_models (
    service_id  BIGINT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    model       TEXT NOT NULL,
    PRIMARY KEY (service_id, model)
);

CREATE TABLE requests (
    id                 TEXT PRIMARY KEY,
    user_id            BIGINT NOT NULL,
    key_id             BIGINT,
    provider_id        BIGINT,
    service            TEXT,
    type               TEXT,
    endpoint           TEXT NOT NULL,
    model              TEXT,
    status             INTEGER NOT NULL,
    error_type         TEXT,
    started_at         DOUBLE PRECISION NOT NULL,
    ttfb_ms            DOUBLE PRECISION,
    duration_ms        DOUBLE PRECISION,
    -- BIGINT like SQLite's INTEGER: an agent's usage numbers are stored as reported.
    prompt_tokens      BIGINT,
    completion_tokens  BIGINT,
    audio_seconds      DOUBLE PRECISION,
    images             BIGINT,
    bytes_in           BIGINT NOT NULL DEFAULT 0,
    bytes_out          BIGINT NOT NULL DEFAULT 0,
    cancelled          BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX requests_user_time ON requests(user_id, started_at);

-- Bumped in the same transaction as every key change, so each hub instance can tell
-- cheaply that its key cache is stale (LISTEN/NOTIFY tells it sooner; this survives a
-- dropped listener connection).
CREATE TABLE counters (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('keys_version', 0);
