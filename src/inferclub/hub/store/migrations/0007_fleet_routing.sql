-- Failover: how many providers a request tried, and the model that served it when a fallback
-- model stood in for the one asked (`model` stays what the client asked for).
ALTER TABLE requests ADD COLUMN attempts INTEGER;
ALTER TABLE requests ADD COLUMN served_model TEXT;
