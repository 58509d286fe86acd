-- Retention deletes the oldest rows of every user in bounded batches: by start time alone.
CREATE INDEX requests_time ON requests(started_at);
-- The dashboard's history filtered by model (its most used filter), newest first.
CREATE INDEX requests_user_model_time ON requests(user_id, model, started_at);
