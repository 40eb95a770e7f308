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
