//! The suppression list's table: addresses that are never mailed again. Addresses compare
//! case-insensitively in the domain part.

use std::collections::HashMap;

use diesel::prelude::*;

use crate::db::schema::suppressions;
use crate::db::DbConnection;
use crate::db::StoreError;
use crate::mail::address::comparison_key;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = suppressions)]
pub struct Suppression {
    pub address: String,
    pub reason: String,
    pub source: String,
    pub notification_id: Option<String>,
    pub created_at: i64,
}

/// Adds `address` unless it is already there. Returns whether it was added.
pub fn add(
    conn: &mut DbConnection,
    address: &str,
    reason: &str,
    source: &str,
    notification_id: Option<&str>,
    now: i64,
) -> Result<bool, diesel::result::Error> {
    let row = (
        suppressions::address.eq(comparison_key(address)),
        suppressions::reason.eq(reason),
        suppressions::source.eq(source),
        suppressions::notification_id.eq(notification_id),
        suppressions::created_at.eq(now),
    );
    let n = crate::db::per_backend!(conn, |c| diesel::insert_into(suppressions::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(c)?);
    Ok(n > 0)
}

pub fn remove(conn: &mut DbConnection, address: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(suppressions::table.find(comparison_key(address))).execute(conn)? > 0)
}

pub fn find(conn: &mut DbConnection, address: &str) -> Result<Option<Suppression>, StoreError> {
    Ok(suppressions::table
        .find(comparison_key(address))
        .select(Suppression::as_select())
        .first(conn)
        .optional()?)
}

/// Which of `addresses` are suppressed, with the reason, by normalized address.
pub fn reasons(
    conn: &mut DbConnection,
    addresses: &[String],
) -> Result<HashMap<String, String>, diesel::result::Error> {
    if addresses.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<String> = addresses.iter().map(|a| comparison_key(a)).collect();
    let mut out = HashMap::new();
    for chunk in keys.chunks(500) {
        let rows: Vec<(String, String)> = suppressions::table
            .filter(suppressions::address.eq_any(chunk))
            .select((suppressions::address, suppressions::reason))
            .load(conn)?;
        out.extend(rows);
    }
    Ok(out)
}

/// Up to `limit` entries after `after` (by address), optionally only addresses containing `filter`.
pub fn list(
    conn: &mut DbConnection,
    filter: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Suppression>, StoreError> {
    let mut q = suppressions::table.into_boxed();
    if let Some(f) = filter {
        q = q.filter(suppressions::address.like(format!("%{}%", f.replace(['%', '_'], ""))));
    }
    if let Some(a) = after {
        q = q.filter(suppressions::address.gt(a.to_string()));
    }
    Ok(q.order(suppressions::address.asc())
        .limit(limit)
        .select(Suppression::as_select())
        .load(conn)?)
}
