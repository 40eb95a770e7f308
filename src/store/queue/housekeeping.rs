//! Periodic housekeeping of the queue: expiry, abandoned leases, and held versus queued.

use diesel::prelude::*;

use crate::db::DbConnection;
use crate::db::StoreError;
use crate::store::notifications::{Status, EXPIRED};
use crate::store::webhooks::NotificationData;

/// Why an admin notification waits (also its `status_reason` while held).
pub const NO_ADMIN_EMAIL: &str = "no admin address is configured (PUT /settings/admin-email)";

/// What the settings allow, as housekeeping applies it.
#[derive(Debug, Clone, Copy)]
pub struct Routing<'a> {
    /// None when mail can go out; else why it is held.
    pub blocked: Option<&'a str>,
    /// Where admin events go.
    pub admin_email: Option<&'a str>,
}

/// Whose expired leases housekeeping may take back. An expired lease alone is no proof that its
/// owner is gone: while the database was away, no owner could renew or record, and one that
/// sent a message meanwhile still holds its outcome. So a live owner's own rows are never taken
/// (it records or releases every one of them itself), and other owners' rows only once the
/// database has been up, and reachable from here, for longer than a lease: time for their
/// owners to come back and write what they hold.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub owner: String,
    /// Nothing here failed to reach the database for at least one lease.
    pub reachable_for_a_lease: bool,
    pub lease_ms: i64,
}

/// How long the database server has been running, where it says (PostgreSQL); None on SQLite,
/// where the file is the database and there is nothing to restart.
fn database_uptime_ms(conn: &mut DbConnection) -> Result<Option<i64>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Uptime {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }
    match conn {
        DbConnection::Postgres(c) => {
            let up: Uptime = diesel::sql_query(
                "SELECT (EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time())) * 1000)::bigint AS ms",
            )
            .get_result(c)?;
            Ok(Some(up.ms))
        }
        DbConnection::Sqlite(_) => Ok(None),
    }
}

/// Periodic housekeeping: expire what is overdue, requeue abandoned leases (under the
/// [`Requeue`] rule), and move notifications between `held` and `queued` as the settings allow.
/// Returns how many rows became queued.
pub fn maintain(
    conn: &mut DbConnection,
    now: i64,
    d: Routing<'_>,
    requeue: &Requeue,
) -> Result<usize, StoreError> {
    conn.transaction(|conn| {
        expire_overdue(conn, now)?;
        let taken = take_back_leases(conn, now, requeue)?;
        Ok(taken + follow_routing(conn, now, d)?)
    })
}

/// Queued or held notifications past their lifetime become `expired`, with their webhooks.
fn expire_overdue(conn: &mut DbConnection, now: i64) -> Result<(), StoreError> {
    use crate::db::schema::notifications::dsl::*;
    let overdue = notifications.filter(
        status
            .eq_any([Status::Queued.as_str(), Status::Held.as_str()])
            .and(expires_at.le(now)),
    );
    let expiring: Vec<(String, String, Option<String>)> =
        overdue.select((id, event, recipient)).load(conn)?;
    if expiring.is_empty() {
        return Ok(());
    }
    let ids: Vec<&String> = expiring.iter().map(|(i, _, _)| i).collect();
    diesel::update(notifications.filter(id.eq_any(ids)))
        .set((
            status.eq(Status::Expired.as_str()),
            status_reason.eq(EXPIRED),
            updated_at.eq(now),
        ))
        .execute(conn)?;
    let hooks = crate::store::webhooks::load(conn)?;
    for (nid, ev, to) in &expiring {
        let hook = NotificationData::change(nid, ev, to.as_deref(), Status::Expired, Some(EXPIRED));
        crate::store::webhooks::enqueue(conn, &hooks, "notification.expired", &hook, now)?;
    }
    Ok(())
}

/// Expired leases of other owners go back to the queue, under the [`Requeue`] rule.
fn take_back_leases(conn: &mut DbConnection, now: i64, requeue: &Requeue) -> Result<usize, StoreError> {
    use crate::db::schema::notifications::dsl::*;
    let take_others =
        requeue.reachable_for_a_lease && database_uptime_ms(conn)?.is_none_or(|up| up > requeue.lease_ms);
    if !take_others {
        return Ok(0);
    }
    Ok(diesel::update(
        notifications.filter(
            status
                .eq(Status::Sending.as_str())
                .and(lease_until.lt(now))
                .and(lease_owner.ne(&requeue.owner)),
        ),
    )
    .set((
        status.eq(Status::Queued.as_str()),
        status_reason.eq("requeued: the worker sending it stopped before recording a result"),
        lease_owner.eq(None::<String>),
        lease_until.eq(None::<i64>),
        next_attempt_at.eq(now),
        updated_at.eq(now),
    ))
    .execute(conn)?)
}

/// Holds what cannot be sent (with the current reason), and queues what now can: with an admin
/// address, admin events get it as their recipient. Returns how many became queued.
fn follow_routing(conn: &mut DbConnection, now: i64, d: Routing<'_>) -> Result<usize, StoreError> {
    use crate::db::schema::notifications::dsl::*;
    if let Some(reason) = d.blocked {
        // Queued ones go back on hold; held ones get the current reason.
        diesel::update(
            notifications.filter(
                status.eq(Status::Queued.as_str()).or(status
                    .eq(Status::Held.as_str())
                    .and(status_reason.is_null().or(status_reason.ne(reason)))),
            ),
        )
        .set((
            status.eq(Status::Held.as_str()),
            status_reason.eq(reason),
            updated_at.eq(now),
        ))
        .execute(conn)?;
        return Ok(0);
    }
    let held = status.eq(Status::Held.as_str());
    let mut queued = diesel::update(notifications.filter(held.and(recipient.is_not_null())))
        .set((
            status.eq(Status::Queued.as_str()),
            status_reason.eq(None::<String>),
            next_attempt_at.eq(now),
            updated_at.eq(now),
        ))
        .execute(conn)?;
    match d.admin_email {
        None => {
            diesel::update(
                notifications.filter(
                    held.and(recipient.is_null())
                        .and(status_reason.is_null().or(status_reason.ne(NO_ADMIN_EMAIL))),
                ),
            )
            .set((status_reason.eq(NO_ADMIN_EMAIL), updated_at.eq(now)))
            .execute(conn)?;
        }
        Some(admin) => {
            queued += diesel::update(notifications.filter(held.and(recipient.is_null())))
                .set((
                    status.eq(Status::Queued.as_str()),
                    status_reason.eq(None::<String>),
                    recipient.eq(admin),
                    next_attempt_at.eq(now),
                    updated_at.eq(now),
                ))
                .execute(conn)?;
        }
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;

    use super::*;
    use crate::db::DbConnection;

    /// A row being sent by `owner` whose lease ran out a while ago.
    fn expired_lease(conn: &mut DbConnection, owner: &str) {
        conn.batch_execute(&format!(
            "INSERT INTO notifications (id, event, recipient, data, subject, status, created_at, \
             updated_at, expires_at, next_attempt_at, created_by, lease_owner, lease_until, attempt_count) \
             VALUES ('n1', 'user_deactivated', 'ada@example.com', '{{}}', 'Bye', 'sending', 1, 1, \
             9999999999999, 1, 'test', '{owner}', 1000, 1)"
        ))
        .unwrap();
    }

    fn status(conn: &mut DbConnection) -> String {
        crate::db::schema::notifications::table
            .select(crate::db::schema::notifications::status)
            .first::<String>(conn)
            .unwrap()
    }

    fn maintain_as(conn: &mut DbConnection, owner: &str, reachable: bool) -> String {
        let d = Routing {
            blocked: None,
            admin_email: None,
        };
        let requeue = Requeue {
            owner: owner.into(),
            reachable_for_a_lease: reachable,
            lease_ms: 1000,
        };
        maintain(conn, crate::db::now_millis(), d, &requeue).unwrap();
        status(conn)
    }

    /// The review's duplicates: an owner that could not record (disk full, database away) lost
    /// its rows to housekeeping, its own or another instance's, as soon as the lease ran out.
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(conn: &mut DbConnection) {
        crate::db::run_migrations(conn).unwrap();
        expired_lease(conn, "a");
        assert_eq!(
            maintain_as(conn, "a", true),
            "sending",
            "its own owner took it back"
        );
        assert_eq!(
            maintain_as(conn, "b", false),
            "sending",
            "taken right after the database came back"
        );
        assert_eq!(
            maintain_as(conn, "b", true),
            "queued",
            "an owner that is gone loses it"
        );
    }

    #[test]
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        let mut conn = DbConnection::Sqlite(SqliteConnection::establish(path.to_str().unwrap()).unwrap());
        expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(&mut conn);
    }

    #[test]
    fn expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back_on_postgres() {
        let Ok(admin) = std::env::var("MAILROOM_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("MAILROOM_TEST_REQUIRE_POSTGRES").is_none());
            eprintln!("SKIPPED: MAILROOM_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!("mailroom_leases_{}", uuid::Uuid::new_v4().simple());
        let mut server = PgConnection::establish(&admin).unwrap();
        server.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let base = admin.split('?').next().unwrap_or(&admin);
        let (host, _) = base.rsplit_once('/').unwrap();
        let mut conn = DbConnection::Postgres(PgConnection::establish(&format!("{host}/{name}")).unwrap());
        // The server has been up for longer than the one-second lease.
        expired_leases_are_taken_only_from_owners_that_had_a_lease_to_come_back(&mut conn);
        assert_eq!(
            database_uptime_ms(&mut conn).unwrap().map(|ms| ms > 1000),
            Some(true)
        );
        drop(conn);
        server
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .unwrap();
    }
}
