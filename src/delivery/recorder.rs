//! Writes delivery outcomes as they arrive, as many per transaction as are waiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::work::DbTrouble;
use crate::db::Db;
use crate::store::queue::outcomes::{self, Recorded};

/// Writes outcomes as they arrive, as many per transaction as are waiting. A failed write is
/// retried (the leases of rows still waiting here keep being renewed); once the dispatcher has
/// stopped, a few more tries are made before giving up (their leases then expire and the rows are
/// retried: at least once, never lost).
pub(super) async fn record_outcomes(
    db: Db,
    owner: String,
    mut rx: mpsc::UnboundedReceiver<Recorded>,
    trouble: Arc<DbTrouble>,
) {
    let mut pending: Vec<Recorded> = Vec::new();
    let mut closed = false;
    let mut failures_after_close = 0;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
        }
        while pending.len() < 1000 {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let batch = Arc::new(std::mem::take(&mut pending));
        let (owner2, to_write) = (owner.clone(), batch.clone());
        let result = db
            .write(move |conn| outcomes::record(conn, &owner2, &to_write))
            .await;
        if let Err(e) = result {
            trouble.seen();
            tracing::error!(
                error = format!("{e:#}"),
                "recording delivery outcomes failed; retrying"
            );
            pending = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
            if closed || rx.is_closed() {
                failures_after_close += 1;
                if failures_after_close >= 3 {
                    tracing::error!(
                        unrecorded = pending.len(),
                        "giving up on recording outcomes; their leases will expire and they will be sent again"
                    );
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
