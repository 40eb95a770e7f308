//! Storage: one diesel code path over SQLite and PostgreSQL, chosen by the URL scheme.

mod error;
pub mod schema;

pub use error::{connection_lost, DbError, StoreError};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseUrl;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl DbConnection {
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(_))
    }
}

/// Opens the right backend for the URL itself: diesel's `establish` would guess from the string
/// and hide the real connection error.
#[derive(Debug, Clone)]
pub struct Manager {
    url: DatabaseUrl,
}

impl Manager {
    pub fn new(url: DatabaseUrl) -> Self {
        Self { url }
    }

    pub fn open(&self) -> Result<DbConnection, diesel::ConnectionError> {
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                let path = path.to_str().ok_or_else(|| {
                    diesel::ConnectionError::BadConnection("the SQLite path is not UTF-8".into())
                })?;
                let mut conn = SqliteConnection::establish(path)?;
                // WAL lets readers run beside the writer; FULL sync makes each commit durable
                // before we answer 202; the busy timeout waits out another process's write lock.
                // Checkpoints are the checkpointer thread's job (see `checkpointer`): a commit
                // checkpoints only if the WAL outgrew what that thread keeps up with, and the
                // WAL file is cut back to 64 MiB after it is reset.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                     PRAGMA wal_autocheckpoint = 16384; PRAGMA journal_size_limit = 67108864;",
                )
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConnection::Sqlite(conn))
            }
            DatabaseUrl::Postgres(url) => Ok(DbConnection::Postgres(PgConnection::establish(url)?)),
        }
    }
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        self.open().map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub type Pool = r2d2::Pool<Manager>;
pub type PooledConnection = r2d2::PooledConnection<Manager>;

/// Connection pools. SQLite allows one writer at a time, so writes go through a single pooled
/// connection: that avoids `SQLITE_BUSY` when two deferred transactions both try to upgrade to
/// a write lock. PostgreSQL uses one pool for both.
#[derive(Clone)]
pub struct Db {
    read: Pool,
    write: Pool,
    backend: &'static str,
    url: DatabaseUrl,
    /// The last failed write because storage was full, until a write succeeds again.
    storage: Arc<Mutex<Option<StorageFailure>>>,
    /// SQLite only: the checkpointer thread stops when the last clone is dropped.
    _checkpointer: Option<std::sync::mpsc::Sender<()>>,
}

/// When and why the database last refused a write for lack of space.
#[derive(Debug, Clone)]
pub struct StorageFailure {
    pub at: i64,
    pub cause: String,
}

impl Db {
    pub fn connect(url: &DatabaseUrl, pool_size: u32) -> anyhow::Result<Self> {
        if let DatabaseUrl::Sqlite(path) = url {
            prepare_sqlite_files(path)?;
        }
        let manager = Manager::new(url.clone());
        // Fail with the real error (bad path, refused connection) before building pools.
        let mut first = manager
            .open()
            .with_context(|| format!("cannot open the {} database", url.backend_name()))?;
        run_migrations(&mut first)?;
        drop(first);
        // A PostgreSQL server that is down should cost a request about a second, not the pool's
        // usual wait; SQLite connections are local files and only ever wait for each other.
        let wait = match url {
            DatabaseUrl::Sqlite(_) => Duration::from_secs(10),
            DatabaseUrl::Postgres(_) => Duration::from_secs(1),
        };
        let build = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(wait)
                .build(manager.clone())
                .context("cannot build the database pool")
        };
        let (read, write) = match url {
            DatabaseUrl::Sqlite(_) => (build(pool_size)?, build(1)?),
            DatabaseUrl::Postgres(_) => {
                let pool = build(pool_size)?;
                (pool.clone(), pool)
            }
        };
        Ok(Self {
            read,
            write,
            backend: url.backend_name(),
            url: url.clone(),
            storage: Arc::default(),
            _checkpointer: match url {
                DatabaseUrl::Sqlite(_) => Some(checkpointer(manager)?),
                DatabaseUrl::Postgres(_) => None,
            },
        })
    }

    /// The PostgreSQL URL, for a connection of its own (LISTEN); None on SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.url {
            DatabaseUrl::Postgres(url) => Some(url),
            DatabaseUrl::Sqlite(_) => None,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Set while writes fail for lack of space (readiness fails and stats report it).
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records how a write ended, so that a full disk shows in readiness and stats until a write
    /// succeeds again.
    pub fn note_write<T, E: DbError>(&self, result: &Result<T, E>) {
        let mut storage = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                if storage.take().is_some() {
                    tracing::info!("database writes succeed again");
                }
            }
            Err(e) => {
                let Some(cause) = e.storage_full() else {
                    return;
                };
                if storage.is_none() {
                    tracing::error!(%cause, "database writes fail: the disk is full");
                }
                *storage = Some(StorageFailure {
                    at: now_millis(),
                    cause: cause.to_string(),
                });
            }
        }
    }

    pub fn read_conn(&self) -> Result<PooledConnection, StoreError> {
        self.read
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no database connection available: {e}")))
    }

    pub fn write_conn(&self) -> Result<PooledConnection, StoreError> {
        self.write
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no database connection available: {e}")))
    }

    /// Runs `f` on a read connection on the blocking thread pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: DbError,
    {
        let db = self.clone();
        blocking(move || f(&mut *db.read_conn()?)).await
    }

    /// Runs `f` inside a transaction on the write connection, on the blocking thread pool.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: DbError,
    {
        let db = self.clone();
        blocking(move || {
            let mut conn = db.write_conn()?;
            let result = write_transaction(&mut conn, f);
            db.note_write(&result);
            result
        })
        .await
    }
}

/// Runs blocking database work off the async executor.
async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: DbError,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(anyhow::anyhow!("blocking database task failed: {e}")))?
}

/// How often the checkpointer copies committed WAL pages into the database file. Measured on
/// the accept benchmark (BENCHMARKS.md): 25 ms lowered the p99 at fixed rates; 100 ms and 1 s
/// raised it (bigger checkpoints, longer fsyncs of the database file beside the commits').
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// Starts a thread that runs `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its own every
/// [`CHECKPOINT_EVERY`]. Without it, the commit that crosses SQLite's 1,000-page threshold does
/// the checkpoint (copying and fsyncing the database file) while the requests of its group wait
/// for their 202s. A PASSIVE checkpoint never blocks writers or readers. The thread ends when
/// the returned sender and all its clones are dropped.
fn checkpointer(manager: Manager) -> anyhow::Result<std::sync::mpsc::Sender<()>> {
    let mut conn = manager
        .open()
        .context("cannot open the checkpointer's connection")?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("mailroom-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                match conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("WAL checkpoints succeed again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "a WAL checkpoint failed; commits will checkpoint the WAL themselves once it is large");
                    }
                    Err(_) => {}
                }
            }
        })
        .context("cannot start the checkpointer thread")?;
    Ok(stop)
}

/// The database holds password-reset links and the like: its directory is created 0700, and the
/// file is created 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the
/// database file's mode). Files from an earlier version are tightened to 0600 too.
fn prepare_sqlite_files(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        crate::secrets::create_private_dir(dir)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if let Ok(meta) = std::fs::metadata(&file) {
                if meta.permissions().mode() & 0o077 != 0 {
                    if let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                        tracing::warn!(file = %file.display(), error = %e, "cannot make the database file private");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs `f` in a write transaction. On SQLite it begins with `BEGIN IMMEDIATE`: a deferred
/// transaction that reads first and writes later fails with `SQLITE_BUSY` at once (the busy
/// timeout does not apply) when another process sharing the file wrote in between.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let DbConnection::Sqlite(inner) = conn else {
        return conn.transaction(f);
    };
    AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
    // Nested `transaction` calls inside `f` see the open transaction and use savepoints.
    let result = f(conn);
    let DbConnection::Sqlite(inner) = conn else {
        unreachable!("the connection cannot change backend");
    };
    match result {
        Ok(value) => match AnsiTransactionManager::commit_transaction(inner) {
            Ok(()) => Ok(value),
            Err(e) => {
                let _ = AnsiTransactionManager::rollback_transaction(inner);
                Err(e.into())
            }
        },
        Err(e) => {
            AnsiTransactionManager::rollback_transaction(inner)?;
            Err(e)
        }
    }
}

/// Applies pending migrations; on PostgreSQL under an advisory lock so that instances starting
/// together do not race.
pub fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<()> {
    let result = match conn {
        DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()),
        DbConnection::Postgres(c) => {
            c.batch_execute("SELECT pg_advisory_lock(7220514)")
                .context("cannot take the migration lock")?;
            let r = c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|_| ());
            c.batch_execute("SELECT pg_advisory_unlock(7220514)")
                .context("cannot release the migration lock")?;
            r
        }
    };
    result.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))
}

/// Runs the same statement on whichever backend `conn` holds: diesel's multi-row inserts and
/// raw SQL with backend-specific binds do not go through the `MultiConnection` enum, so the
/// statement is written once here and compiled for each backend.
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite($c) => $body,
            $crate::db::DbConnection::Postgres($c) => $body,
        }
    };
}
pub(crate) use per_backend;

/// Milliseconds since the Unix epoch: the one time representation stored in every table.
/// The PostgreSQL channel on which new and newly due notifications are announced, so that every
/// instance's dispatcher wakes at once instead of at its next poll.
pub const QUEUE_CHANNEL: &str = "mailroom_queue";

/// Announces work on [`QUEUE_CHANNEL`] (delivered when the surrounding transaction commits);
/// nothing on SQLite, where every process shares one file and polls it.
pub fn notify_queue(conn: &mut DbConnection) -> diesel::QueryResult<()> {
    if let DbConnection::Postgres(c) = conn {
        diesel::RunQueryDsl::execute(diesel::sql_query(format!("NOTIFY {QUEUE_CHANNEL}")), c)?;
    }
    Ok(())
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn millis_to_datetime(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::prelude::*;

    /// Applies the migrations before the bodies moved, stores a queued notification the old
    /// way, then upgrades; on PostgreSQL too when `MAILROOM_TEST_POSTGRES_URL` is set.
    fn upgrade_keeps_bodies(conn: &mut DbConnection) {
        const BEFORE_BODIES_MOVED: usize = 5; // up to 2026-11-23-000005_status_indexes
        for _ in 0..BEFORE_BODIES_MOVED {
            let ran = match conn {
                DbConnection::Sqlite(c) => c.run_next_migration(SQLITE_MIGRATIONS),
                DbConnection::Postgres(c) => c.run_next_migration(POSTGRES_MIGRATIONS),
            };
            ran.unwrap();
        }
        conn.batch_execute(
            "INSERT INTO notifications (id, event, recipient, data, subject, text_body, html_body, \
             status, created_at, updated_at, expires_at, next_attempt_at, created_by) \
             VALUES ('n1', 'user_deactivated', 'ada@example.com', '{}', 'Bye', 'plain words', \
             '<p>html words</p>', 'queued', 1, 1, 9999999999999, 1, 'test')",
        )
        .unwrap();
        run_migrations(conn).unwrap();
        let bodies: Vec<(String, String, String)> = schema::notification_bodies::table
            .select((
                schema::notification_bodies::notification_id,
                schema::notification_bodies::text_body,
                schema::notification_bodies::html_body,
            ))
            .load(conn)
            .unwrap();
        assert_eq!(
            bodies,
            [("n1".into(), "plain words".into(), "<p>html words</p>".into())]
        );
    }

    #[test]
    fn an_upgrade_keeps_the_bodies_of_notifications_queued_before_it_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = DbConnection::Sqlite(SqliteConnection::establish(path.to_str().unwrap()).unwrap());
        upgrade_keeps_bodies(&mut conn);
    }

    #[test]
    fn a_query_whose_postgres_connection_is_terminated_is_unavailable_not_internal() {
        let Ok(url) = std::env::var("MAILROOM_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("MAILROOM_TEST_REQUIRE_POSTGRES").is_none());
            eprintln!("SKIPPED: MAILROOM_TEST_POSTGRES_URL is not set");
            return;
        };
        let mut victim = PgConnection::establish(&url).unwrap();
        #[derive(QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut victim)
            .unwrap()
            .pid;
        let killer = std::thread::spawn(move || {
            let mut admin = PgConnection::establish(&url).unwrap();
            // Terminate once the victim's query is running.
            loop {
                let running: i64 = diesel::sql_query(format!(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {pid} AND query LIKE 'SELECT pg_sleep%'"
                ))
                .get_result::<Count>(&mut admin)
                .unwrap()
                .n;
                if running > 0 {
                    break;
                }
            }
            diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
                .execute(&mut admin)
                .unwrap();
        });
        let e = diesel::sql_query("SELECT pg_sleep(30)")
            .execute(&mut victim)
            .unwrap_err();
        killer.join().unwrap();
        assert!(connection_lost(&e), "{e:?}");
        let stored = StoreError::from(e);
        assert!(matches!(stored, StoreError::Unavailable(_)), "{stored:?}");
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    #[test]
    fn an_upgrade_keeps_the_bodies_of_notifications_queued_before_it_on_postgres() {
        let Ok(admin) = std::env::var("MAILROOM_TEST_POSTGRES_URL") else {
            assert!(std::env::var_os("MAILROOM_TEST_REQUIRE_POSTGRES").is_none());
            eprintln!("SKIPPED: MAILROOM_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!("mailroom_upgrade_{}", uuid::Uuid::new_v4().simple());
        let mut server = PgConnection::establish(&admin).unwrap();
        server.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let base = admin.split('?').next().unwrap_or(&admin);
        let (host, _) = base.rsplit_once('/').unwrap();
        let mut conn = DbConnection::Postgres(PgConnection::establish(&format!("{host}/{name}")).unwrap());
        upgrade_keeps_bodies(&mut conn);
        drop(conn);
        server
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .unwrap();
    }
}
