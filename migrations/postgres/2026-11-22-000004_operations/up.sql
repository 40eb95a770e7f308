-- Addresses that must not be mailed again: a permanent failure naming the recipient, or by hand.
-- address: the local part as given, the domain in lower case.
CREATE TABLE suppressions (
    address TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    notification_id TEXT,
    created_at BIGINT NOT NULL
);

-- Webhook calls, written in the same transaction as the status change that causes them and
-- delivered by the dispatcher with retries: at least once, never lost.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    notification_id TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);
