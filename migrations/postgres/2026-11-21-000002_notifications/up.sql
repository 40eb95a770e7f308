-- The outbox. A notification is rendered when accepted and sent as stored.
-- recipient NULL: an admin event waiting for the admin address (status 'held').
CREATE TABLE notifications (
    id TEXT PRIMARY KEY NOT NULL,
    event TEXT NOT NULL,
    recipient TEXT,
    to_name TEXT,
    data TEXT NOT NULL,
    subject TEXT NOT NULL,
    text_body TEXT NOT NULL,
    html_body TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    sent_at BIGINT,
    message_id TEXT,
    smtp_reply TEXT,
    created_by TEXT NOT NULL
);
-- Claiming: due queued rows and expired leases, in order.
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_lease ON notifications (status, lease_until);
CREATE INDEX notifications_created ON notifications (created_at);

CREATE TABLE notification_attempts (
    id BIGSERIAL PRIMARY KEY,
    notification_id TEXT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempted_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    smtp_code INTEGER,
    reply TEXT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX notification_attempts_notification ON notification_attempts (notification_id, id);

-- Idempotency keys, per token subject, written in the same transaction as the notification.
CREATE TABLE idempotency_keys (
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (subject, key)
);
