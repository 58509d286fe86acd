-- Key scopes and provider name ownership, PostgreSQL dialect of ../0006_key_scopes.sql.
-- Key scopes: a key may be limited to the OpenAI API (`inference`) or to agent heartbeats
-- (`agent`). Keys made before scopes existed did both, and keep doing both (`all`).
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'all'
    CHECK (scope IN ('all', 'inference', 'agent'));

-- A provider name belongs to the key whose heartbeat registered it, so that another key of the
-- same user cannot re-point it. NULL: providers registered before this migration (the next
-- heartbeat binds them) and names whose key was revoked (free for any key of the user).
ALTER TABLE providers ADD COLUMN key_id BIGINT REFERENCES api_keys(id) ON DELETE SET NULL;
CREATE INDEX providers_key ON providers(key_id);

-- GitHub accounts get their own namespace, '@' + their GitHub login: no local login (letters,
-- digits, '.', '_', '-') can ever equal one, so a GitHub sign-in never renames a local user.
UPDATE users SET login = '@' || login WHERE github_id IS NOT NULL;

-- Local users that a GitHub sign-in renamed to 'login~id' get their login back when it is free
-- (the lowest id first, should two have been renamed from the same login).
UPDATE users SET login = split_part(login, '~', 1)
WHERE github_id IS NULL
  AND strpos(login, '~') > 1
  AND login = split_part(login, '~', 1) || '~' || id::text
  AND id = (SELECT min(u.id) FROM users u
            WHERE u.github_id IS NULL AND strpos(u.login, '~') > 1
              AND split_part(u.login, '~', 1) = split_part(users.login, '~', 1))
  AND NOT EXISTS (SELECT 1 FROM users u WHERE u.login = split_part(users.login, '~', 1));
