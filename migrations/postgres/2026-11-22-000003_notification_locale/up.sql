-- The locale whose templates a notification was rendered with (null before locales existed).
ALTER TABLE notifications ADD COLUMN locale TEXT;
