-- Dashboard sign-in: sessions, one-time sign-in links and OAuth states. Each token is a random
-- 256-bit secret held by a browser (or printed once); only its SHA-256 is stored.
CREATE TABLE auth_tokens (
    hash        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,        -- 'session', 'login_link' or 'oauth_state'
    user_id     BIGINT REFERENCES users(id) ON DELETE CASCADE,
    data        TEXT NOT NULL DEFAULT '',
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX auth_tokens_expiry ON auth_tokens(expires_at);
