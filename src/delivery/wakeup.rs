//! Cross-instance wake-ups on PostgreSQL: every accepting transaction announces itself with
//! `NOTIFY` (see [`crate::db::notify_queue`]), and each dispatcher listens on a connection of its
//! own, so a notification accepted by one instance is claimed by an idle one at once instead of
//! at its next poll. Polling stays as the fallback (a lost connection, a missed announcement).

use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use tokio::sync::watch;

use crate::db::QUEUE_CHANNEL;

/// How often the listening connection is checked for announcements: a non-blocking read, so the
/// cost is one syscall per check, and a remote wake-up takes at most this long.
const CHECK_EVERY: Duration = Duration::from_millis(20);
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Listens on its own thread until `stop` turns true, calling `wake` for announced work.
pub fn listen(url: String, wake: impl Fn() + Send + 'static, stop: watch::Receiver<bool>) {
    let spawned = std::thread::Builder::new()
        .name("mailroom-listen".into())
        .spawn(move || run(&url, &wake, &stop));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the PostgreSQL listener; other instances' notifications wait for the next poll");
    }
}

fn run(url: &str, wake: &dyn Fn(), stop: &watch::Receiver<bool>) {
    while !*stop.borrow() {
        let mut conn = match PgConnection::establish(url)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                diesel::sql_query(format!("LISTEN {QUEUE_CHANNEL}"))
                    .execute(&mut c)
                    .map(|_| c)
                    .map_err(|e| e.to_string())
            }) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL listener cannot connect; retrying");
                pause(RECONNECT_AFTER, stop);
                continue;
            }
        };
        // Whatever was announced while we were not listening is picked up by this wake-up.
        wake();
        loop {
            if *stop.borrow() {
                return;
            }
            let mut announced = false;
            let mut lost = None;
            for n in conn.notifications_iter() {
                match n {
                    Ok(_) => announced = true,
                    Err(e) => {
                        lost = Some(e);
                        break;
                    }
                }
            }
            if announced {
                wake();
            }
            if let Some(e) = lost {
                tracing::warn!(error = %e, "PostgreSQL listener lost its connection; reconnecting");
                break;
            }
            std::thread::sleep(CHECK_EVERY);
        }
    }
}

fn pause(total: Duration, stop: &watch::Receiver<bool>) {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < total && !*stop.borrow() {
        std::thread::sleep(step);
        waited += step;
    }
}
