-- The statistics and metrics read the oldest queued notification and the newest attempt of each
-- outcome on every call: with these indexes each is one index lookup, not a scan of the queue
-- (or of every attempt) while a large queue drains.
CREATE INDEX notifications_status_created ON notifications (status, created_at);
CREATE INDEX notification_attempts_outcome ON notification_attempts (outcome, id);
