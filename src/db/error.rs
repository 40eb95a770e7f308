//! What storage can fail with, in its own words: the HTTP edge decides what a client is told
//! (`error.rs` maps each kind once), the workers decide whether to retry.

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had, or the one in use was lost (a restarted server,
    /// `pg_terminate_backend`, a dropped network): the database is unavailable, not broken.
    #[error("{0}")]
    Unavailable(String),
    /// The database could not grow (disk or quota full); nothing was written.
    #[error("the database's disk is full ({0})")]
    StorageFull(String),
    /// Another writer changed the row between our read and our write.
    #[error("{0}")]
    Conflict(String),
    /// The caller's `If-Match` does not name the stored version.
    #[error("the stored version is not the one the request names")]
    VersionMismatch,
    /// Anything else: a failed query, a row that cannot be read back.
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        if let Some(cause) = storage_full(&e) {
            return Self::StorageFull(cause);
        }
        if connection_lost(&e) {
            tracing::warn!(error = %e, "the database connection was lost during a query");
            return Self::Unavailable("the database connection was lost; retry".into());
        }
        Self::Other(anyhow::Error::new(e).context("database query failed"))
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Other(anyhow::Error::new(e).context("a stored value is not valid JSON"))
    }
}

/// An error type a [`super::Db`] call may return: storage's own, or a caller's that can carry it
/// (the HTTP error, for handlers that validate inside a transaction).
pub trait DbError: From<StoreError> + From<diesel::result::Error> + Send + 'static {
    /// The cause, when the write failed because storage is full.
    fn storage_full(&self) -> Option<&str>;
}

impl DbError for StoreError {
    fn storage_full(&self) -> Option<&str> {
        match self {
            Self::StorageFull(cause) => Some(cause),
            _ => None,
        }
    }
}

/// Whether a query failed because its connection went away. libpq reports these as messages only.
pub fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        Error::DatabaseError(_, info) => {
            let lower = info.message().to_ascii_lowercase();
            [
                "terminating connection",
                "server closed the connection",
                "connection to server",
                "no connection to the server",
                "could not receive data from server",
                "could not send data to server",
                "ssl syscall error",
                "the database system is shutting down",
                "the database system is starting up",
            ]
            .iter()
            .any(|m| lower.contains(m))
        }
        _ => false,
    }
}

/// Whether the database refused to grow: SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`
/// (53100) and out-of-space I/O errors. diesel exposes only the message for these.
fn storage_full(e: &diesel::result::Error) -> Option<String> {
    let diesel::result::Error::DatabaseError(_, info) = e else {
        return None;
    };
    let message = info.message();
    let lower = message.to_ascii_lowercase();
    (lower.contains("database or disk is full")
        || lower.contains("no space left on device")
        || lower.contains("disk full")
        || lower.contains("could not extend file"))
    .then(|| message.to_string())
}
