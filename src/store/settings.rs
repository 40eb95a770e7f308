//! Settings documents (one JSON row per resource) and audit records.

use diesel::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::schema::{audit_log, settings};
use crate::db::StoreError;
use crate::db::{now_millis, DbConnection};

/// A settings document with its version (the ETag), time and author.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub value: T,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

#[derive(Queryable)]
struct Row {
    value: String,
    version: i64,
    updated_at: i64,
    updated_by: String,
}

pub fn load<T: DeserializeOwned>(
    conn: &mut DbConnection,
    key: &str,
) -> Result<Option<Stored<T>>, StoreError> {
    let row: Option<Row> = settings::table
        .filter(settings::key.eq(key))
        .select((
            settings::value,
            settings::version,
            settings::updated_at,
            settings::updated_by,
        ))
        .first(conn)
        .optional()?;
    row.map(|r| {
        let value = serde_json::from_str(&r.value)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("stored {key} settings are unreadable: {e}")))?;
        Ok(Stored {
            value,
            version: r.version,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
        })
    })
    .transpose()
}

/// The current version of each of `keys` that exists, in key order: a cheap way to tell whether
/// documents read earlier are still current.
pub fn versions(conn: &mut DbConnection, keys: &[&str]) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(settings::table
        .filter(settings::key.eq_any(keys))
        .order(settings::key.asc())
        .select((settings::key, settings::version))
        .load(conn)?)
}

/// Writes the next version of a document. `previous_version` is what the caller read in the same
/// transaction (0: none); a concurrent writer that got there first makes this fail with 409.
pub fn save<T: Serialize>(
    conn: &mut DbConnection,
    key: &str,
    value: T,
    previous_version: i64,
    actor: &str,
) -> Result<Stored<T>, StoreError> {
    let json = serde_json::to_string(&value)?;
    let now = now_millis();
    let version = previous_version + 1;
    let written = if previous_version == 0 {
        diesel::insert_into(settings::table)
            .values((
                settings::key.eq(key),
                settings::value.eq(&json),
                settings::version.eq(version),
                settings::updated_at.eq(now),
                settings::updated_by.eq(actor),
            ))
            .execute(conn)
            .or_else(|e| match e {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => Ok(0),
                e => Err(e),
            })?
    } else {
        diesel::update(
            settings::table.filter(settings::key.eq(key).and(settings::version.eq(previous_version))),
        )
        .set((
            settings::value.eq(&json),
            settings::version.eq(version),
            settings::updated_at.eq(now),
            settings::updated_by.eq(actor),
        ))
        .execute(conn)?
    };
    if written == 0 {
        return Err(StoreError::Conflict(format!(
            "the {key} settings were changed by another request at the same time; read them again and retry"
        )));
    }
    Ok(Stored {
        value,
        version,
        updated_at: now,
        updated_by: actor.to_string(),
    })
}

/// Replaces a settings document in one transaction: builds the next value from the current one
/// (validating it), checks `If-Match` against the current version, saves it and audits which fields changed
/// (the fields named in `secrets` only as "changed").
pub fn update<T, E, F>(
    conn: &mut DbConnection,
    key: &str,
    if_match: Option<&str>,
    actor: &str,
    secrets: &[&str],
    next: F,
) -> Result<Stored<T>, E>
where
    T: Serialize + DeserializeOwned,
    E: From<StoreError>,
    F: FnOnce(Option<&T>) -> Result<T, E>,
{
    let current = load::<T>(conn, key)?;
    let version = current.as_ref().map_or(0, |c| c.version);
    let old = current.as_ref().map(|c| &c.value);
    // A body that is invalid whatever the version is a 422 before any precondition is a 412.
    let value = next(old)?;
    if !if_match_holds(if_match, version) {
        return Err(StoreError::VersionMismatch.into());
    }
    let as_json = |v: &T| serde_json::to_value(v).unwrap_or_default();
    let changes = diff_fields(&old.map(as_json).unwrap_or_default(), &as_json(&value), secrets);
    let stored = save(conn, key, value, version, actor)?;
    audit(
        conn,
        actor,
        "settings.updated",
        key,
        serde_json::json!({ "changes": changes }),
    )?;
    Ok(stored)
}

/// The ETag of a settings document at `version` (0: never saved).
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// Whether an `If-Match` (if any) names `current_version`: one of its tags, weak or strong, or `*`.
pub fn if_match_holds(if_match: Option<&str>, current_version: i64) -> bool {
    let Some(if_match) = if_match else {
        return true;
    };
    let current = etag(current_version);
    if_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
}

/// Appends an audit record. `details` must never hold a secret.
pub fn audit(
    conn: &mut DbConnection,
    actor: &str,
    action: &str,
    resource: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::occurred_at.eq(now_millis()),
            audit_log::actor.eq(actor),
            audit_log::action.eq(action),
            audit_log::resource.eq(resource),
            audit_log::details.eq(details.to_string()),
        ))
        .execute(conn)?;
    Ok(())
}

/// An audit record as stored: id, time, actor, action, resource, details (JSON text).
pub type AuditRow = (i64, i64, String, String, String, String);

/// Up to `limit` audit records older than `before` (all when None), newest first.
pub fn audit_page(
    conn: &mut DbConnection,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut q = audit_log::table.into_boxed();
    if let Some(before) = before {
        q = q.filter(audit_log::id.lt(before));
    }
    Ok(q.order(audit_log::id.desc())
        .limit(limit)
        .select((
            audit_log::id,
            audit_log::occurred_at,
            audit_log::actor,
            audit_log::action,
            audit_log::resource,
            audit_log::details,
        ))
        .load(conn)?)
}

/// The changed fields for the audit log, nested objects as dotted paths (`oauth2.client_id`):
/// old and new values for plain fields; for secrets only `changed` or `removed`. A secret is a
/// field named in `secrets`, or any sealed value wherever it sits: ciphertexts carry their own
/// mark ([`crate::secrets::is_sealed`]), so a secret added to a document later cannot be logged.
pub fn diff_fields(
    old: &serde_json::Value,
    new: &serde_json::Value,
    secrets: &[&str],
) -> Vec<serde_json::Value> {
    let mut changes = Vec::new();
    diff_into(&mut changes, "", old, new, secrets);
    changes
}

fn diff_into(
    changes: &mut Vec<serde_json::Value>,
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    secrets: &[&str],
) {
    use serde_json::Value;
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (o, n) = (
            old.get(k).unwrap_or(&Value::Null),
            new.get(k).unwrap_or(&Value::Null),
        );
        if o == n {
            continue;
        }
        let field = format!("{prefix}{k}");
        // An object added or removed is listed field by field too.
        let nested = |v: &Value| v.is_object() || v.is_null();
        if (o.is_object() || n.is_object()) && nested(o) && nested(n) {
            diff_into(changes, &format!("{field}."), o, n, secrets);
        } else if secrets.contains(&field.as_str()) || holds_sealed(o) || holds_sealed(n) {
            let change = if n.is_null() { "removed" } else { "changed" };
            changes.push(serde_json::json!({"field": field, "change": change}));
        } else {
            changes.push(serde_json::json!({"field": field, "change": "changed", "old": o, "new": n}));
        }
    }
}

/// Whether `value` is, or contains, a sealed secret.
fn holds_sealed(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => crate::secrets::is_sealed(s),
        serde_json::Value::Array(items) => items.iter().any(holds_sealed),
        serde_json::Value::Object(map) => map.values().any(holds_sealed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn sealed_values_at_any_depth_are_logged_only_as_changed_or_removed() {
        let cipher = crate::secrets::SecretCipher::new(&secrecy::SecretBox::new(Box::new([7u8; 32])));
        let seal = |s: &str| cipher.encrypt("test", s).unwrap();
        let old = json!({"host": "a", "password": seal("p1"), "oauth2": {"client_id": "x", "client_secret": seal("s1"), "refresh_token": seal("r1")}});
        let new = json!({"host": "b", "password": seal("p2"), "oauth2": {"client_id": "y", "client_secret": seal("s2")}});
        let changes = super::diff_fields(&old, &new, &[]);
        assert_eq!(
            changes,
            vec![
                json!({"field": "host", "change": "changed", "old": "a", "new": "b"}),
                json!({"field": "oauth2.client_id", "change": "changed", "old": "x", "new": "y"}),
                json!({"field": "oauth2.client_secret", "change": "changed"}),
                json!({"field": "oauth2.refresh_token", "change": "removed"}),
                json!({"field": "password", "change": "changed"}),
            ]
        );
        let logged = serde_json::to_string(&changes).unwrap();
        assert!(!logged.contains("v1:"), "{logged}");
    }
}
