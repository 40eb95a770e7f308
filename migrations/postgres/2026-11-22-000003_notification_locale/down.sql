ALTER TABLE notifications DROP COLUMN locale;
