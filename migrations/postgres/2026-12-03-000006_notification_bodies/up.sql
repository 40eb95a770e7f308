-- Bodies live apart from the row that claims and outcomes update: SQLite rewrites a whole row,
-- overflow pages included, on every UPDATE (and PostgreSQL writes a new version of it), so two
-- status changes per message cost two copies of both bodies (BENCHMARKS.md).
CREATE TABLE notification_bodies (
    notification_id TEXT PRIMARY KEY NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    text_body TEXT NOT NULL,
    html_body TEXT NOT NULL
);
INSERT INTO notification_bodies (notification_id, text_body, html_body)
    SELECT id, text_body, html_body FROM notifications;
ALTER TABLE notifications DROP COLUMN text_body;
ALTER TABLE notifications DROP COLUMN html_body;
