-- Provider ids are never handed out again. Without AUTOINCREMENT, SQLite gives the highest id
-- to the next row once its row is deleted, and a new provider (perhaps another user's) would
-- inherit whatever was bound to the id: its history, an agent still holding its credentials.
-- SQLite cannot add AUTOINCREMENT to a table, so `providers` is rebuilt with the same rows and
-- ids; services keep pointing at them (the migration runs with foreign keys off, see sqlite.py).
CREATE TABLE providers_new (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    callback_url       TEXT NOT NULL,
    agent_version      TEXT NOT NULL DEFAULT '',
    health             TEXT NOT NULL DEFAULT '{}',
    created_at         REAL NOT NULL,
    last_heartbeat_at  REAL NOT NULL,
    UNIQUE (user_id, name)
);
INSERT INTO providers_new (id, user_id, name, callback_url, agent_version, health, created_at,
                           last_heartbeat_at)
    SELECT id, user_id, name, callback_url, agent_version, health, created_at, last_heartbeat_at
    FROM providers;
DROP TABLE providers;
ALTER TABLE providers_new RENAME TO providers;
-- Ids deleted before this migration may still appear in the request history: start above them.
DELETE FROM sqlite_sequence WHERE name = 'providers';
INSERT INTO sqlite_sequence (name, seq) VALUES (
    'providers',
    max(coalesce((SELECT max(id) FROM providers), 0),
        coalesce((SELECT max(provider_id) FROM requests), 0))
);
