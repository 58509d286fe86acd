-- How the hub reaches a provider: `callback` (it calls the agent's callback URL) or `tunnel`
-- (the agent dialled in, docs/protocol.md "The tunnel"; its callback URL is the hub's own).
ALTER TABLE providers ADD COLUMN transport TEXT NOT NULL DEFAULT 'callback';
