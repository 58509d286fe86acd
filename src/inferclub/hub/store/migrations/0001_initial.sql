-- Initial schema. Request history is metadata only: no prompt or output content, ever.
CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    login       TEXT NOT NULL UNIQUE,
    github_id   INTEGER UNIQUE,
    created_at  REAL NOT NULL
);

CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,   -- HMAC-SHA256(pepper, key), never the key itself
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE INDEX api_keys_prefix ON api_keys(prefix);

CREATE TABLE providers (
    id                 INTEGER PRIMARY KEY,
    user_id            INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    callback_url       TEXT NOT NULL,
    agent_version      TEXT NOT NULL DEFAULT '',
    health             TEXT NOT NULL DEFAULT '{}',
    created_at         REAL NOT NULL,
    last_heartbeat_at  REAL NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE services (
    id           INTEGER PRIMARY KEY,
    provider_id  INTEGER NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    type         TEXT NOT NULL,
    engine       TEXT NOT NULL,
    features     TEXT NOT NULL DEFAULT '[]',
    UNIQUE (provider_id, name)
);

CREATE TABLE service_models (
    service_id  INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    model       TEXT NOT NULL,
    PRIMARY KEY (service_id, model)
);

CREATE TABLE requests (
    id                 TEXT PRIMARY KEY,
    user_id            INTEGER NOT NULL,
    key_id             INTEGER,
    provider_id        INTEGER,
    service            TEXT,
    type               TEXT,
    endpoint           TEXT NOT NULL,
    model              TEXT,
    status             INTEGER NOT NULL,
    error_type         TEXT,
    started_at         REAL NOT NULL,
    ttfb_ms            REAL,
    duration_ms        REAL,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    audio_seconds      REAL,
    images             INTEGER,
    bytes_in           INTEGER NOT NULL DEFAULT 0,
    bytes_out          INTEGER NOT NULL DEFAULT 0,
    cancelled          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX requests_user_time ON requests(user_id, started_at);

-- Bumped in the same transaction as every key change, so each hub instance can tell
-- cheaply that its key cache is stale.
CREATE TABLE counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('keys_version', 0);
