// Written by hand: only portable column types, because one schema serves SQLite and PostgreSQL.

diesel::table! {
    settings (key) {
        key -> Text,
        value -> Text,
        version -> BigInt,
        updated_at -> BigInt,
        updated_by -> Text,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        occurred_at -> BigInt,
        actor -> Text,
        action -> Text,
        resource -> Text,
        details -> Text,
    }
}

diesel::table! {
    notifications (id) {
        id -> Text,
        event -> Text,
        recipient -> Nullable<Text>,
        to_name -> Nullable<Text>,
        data -> Text,
        subject -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        expires_at -> BigInt,
        next_attempt_at -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
        attempt_count -> Integer,
        sent_at -> Nullable<BigInt>,
        message_id -> Nullable<Text>,
        smtp_reply -> Nullable<Text>,
        created_by -> Text,
        locale -> Nullable<Text>,
    }
}

diesel::table! {
    notification_bodies (notification_id) {
        notification_id -> Text,
        text_body -> Text,
        html_body -> Text,
    }
}

diesel::table! {
    notification_attempts (id) {
        id -> BigInt,
        notification_id -> Text,
        attempted_at -> BigInt,
        outcome -> Text,
        smtp_code -> Nullable<Integer>,
        reply -> Text,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (subject, key) {
        subject -> Text,
        key -> Text,
        request_hash -> Text,
        notification_id -> Text,
        response -> Text,
        created_at -> BigInt,
    }
}

diesel::joinable!(notification_attempts -> notifications (notification_id));
diesel::allow_tables_to_appear_in_same_query!(notifications, notification_attempts);

diesel::table! {
    suppressions (address) {
        address -> Text,
        reason -> Text,
        source -> Text,
        notification_id -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        endpoint_id -> Text,
        event_type -> Text,
        notification_id -> Nullable<Text>,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_until -> Nullable<BigInt>,
        last_status_code -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}
