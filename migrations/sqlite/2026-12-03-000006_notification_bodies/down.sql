ALTER TABLE notifications ADD COLUMN text_body TEXT NOT NULL DEFAULT '';
ALTER TABLE notifications ADD COLUMN html_body TEXT NOT NULL DEFAULT '';
UPDATE notifications SET
    text_body = (SELECT b.text_body FROM notification_bodies b WHERE b.notification_id = notifications.id),
    html_body = (SELECT b.html_body FROM notification_bodies b WHERE b.notification_id = notifications.id)
    WHERE id IN (SELECT notification_id FROM notification_bodies);
DROP TABLE notification_bodies;
