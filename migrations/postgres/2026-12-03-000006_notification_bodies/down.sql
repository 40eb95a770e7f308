ALTER TABLE notifications ADD COLUMN text_body TEXT NOT NULL DEFAULT '';
ALTER TABLE notifications ADD COLUMN html_body TEXT NOT NULL DEFAULT '';
UPDATE notifications n SET text_body = b.text_body, html_body = b.html_body
    FROM notification_bodies b WHERE b.notification_id = n.id;
DROP TABLE notification_bodies;
