DROP TABLE idempotency_keys;
DROP TABLE notification_attempts;
DROP TABLE notifications;
