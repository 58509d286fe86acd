-- The OpenAI error code a request ended with (`upstream_error`, `server_shutting_down`, ...), next
-- to its type: a 503 from an offline provider and a 503 from a shutdown cut are told apart by it.
ALTER TABLE requests ADD COLUMN error_code TEXT;
