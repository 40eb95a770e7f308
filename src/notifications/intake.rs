//! Group commit for accepted notifications: requests that arrive together are written in one
//! transaction (one fsync), and each is answered only after that transaction is durable.

use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::accept::{self, AcceptContext, AcceptError, Acceptance, Validated};
use crate::db::Db;
use crate::db::StoreError;
use crate::store::notifications as store;

/// Most notifications written in one transaction.
const MAX_GROUP: usize = 512;

struct Job {
    validated: Validated,
    subject: String,
    now: i64,
    reply: oneshot::Sender<Result<Acceptance, AcceptError>>,
}

/// Hands validated notifications to a committer thread.
pub struct Intake {
    jobs: mpsc::Sender<Job>,
}

impl Intake {
    pub fn start(db: Db) -> Self {
        let (jobs, rx) = mpsc::channel(16 * MAX_GROUP);
        thread::Builder::new()
            .name("mailroom-intake".into())
            .spawn(move || committer(db, rx))
            .expect("the intake thread starts");
        Self { jobs }
    }

    /// Stores one notification; resolves once it is committed.
    pub async fn accept(
        &self,
        validated: Validated,
        subject: &str,
        now: i64,
    ) -> Result<Acceptance, AcceptError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            validated,
            subject: subject.to_string(),
            now,
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("the service is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Other(anyhow::anyhow!("the intake thread stopped")))?
    }
}

fn committer(db: Db, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (inputs, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|j| ((j.validated, j.subject, j.now), j.reply))
            .unzip();
        match commit(&db, inputs) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "committing accepted notifications failed");
                for reply in replies {
                    let answer = match &e {
                        StoreError::StorageFull(cause) => StoreError::StorageFull(cause.clone()),
                        _ => StoreError::Unavailable(format!("the notification could not be stored: {e}")),
                    };
                    let _ = reply.send(Err(answer.into()));
                }
            }
        }
    }
}

/// One transaction for the group. Items with an idempotency key each run in a savepoint, so a
/// refused one (a reused key) does not undo the others; the rest go in multi-row INSERTs.
fn commit(
    db: &Db,
    inputs: Vec<(Validated, String, i64)>,
) -> Result<Vec<Result<Acceptance, AcceptError>>, StoreError> {
    let mut conn = db.write_conn()?;
    let result = crate::db::write_transaction(&mut conn, |conn| {
        let mut ctx = AcceptContext::load(conn)?;
        let recipients: Vec<String> = inputs
            .iter()
            .filter_map(|(v, _, _)| ctx.recipient(v.to.as_deref()))
            .collect();
        ctx.suppressed = crate::store::suppressions::reasons(conn, &recipients)?;
        let mut results: Vec<Option<Result<Acceptance, AcceptError>>> = Vec::new();
        results.resize_with(inputs.len(), || None);
        let mut rows = Vec::with_capacity(inputs.len());
        // Keyed items take their keys in one order, (subject, key), in every group: on
        // PostgreSQL two instances' transactions each waiting for a key the other inserted but
        // has not committed would otherwise deadlock, and PostgreSQL would abort one whole group.
        let mut inputs: Vec<(usize, (Validated, String, i64))> = inputs.into_iter().enumerate().collect();
        fn key<'a>(v: &'a Validated, sub: &'a str) -> Option<(&'a str, &'a str)> {
            v.idempotency_key.as_deref().map(|k| (sub, k))
        }
        inputs.sort_by(|(_, (a, a_sub, _)), (_, (b, b_sub, _))| key(a, a_sub).cmp(&key(b, b_sub)));
        for (i, (validated, subject, now)) in inputs {
            let result = if validated.idempotency_key.is_some() {
                diesel::Connection::transaction(conn, |conn| {
                    accept::accept(conn, &ctx, validated, &subject, now)
                })
            } else {
                accept::prepare(&ctx, &validated, &subject, now)
                    .map(|(row, accepted)| {
                        rows.push(row);
                        Acceptance::New(accepted)
                    })
                    .map_err(AcceptError::from)
            };
            let result = match result {
                // Storage failed: the whole group fails, and every request hears why.
                Err(AcceptError::Store(e)) => return Err(e),
                other => other,
            };
            results[i] = Some(result);
        }
        let results: Vec<Result<Acceptance, AcceptError>> = results
            .into_iter()
            .map(|r| r.expect("every input has a result"))
            .collect();
        store::insert_many(conn, &rows)?;
        crate::db::notify_queue(conn)?;
        // Suppressed ones are final at once: their webhooks go in this transaction too.
        let suppressed: Vec<&accept::Accepted> = results
            .iter()
            .filter_map(|r| match r {
                Ok(Acceptance::New(a)) if a.status == store::Status::Suppressed => Some(a),
                _ => None,
            })
            .collect();
        if !suppressed.is_empty() {
            let hooks = crate::store::webhooks::load(conn)?;
            for a in suppressed {
                let data = crate::store::webhooks::NotificationData::change(
                    &a.id,
                    &a.event,
                    a.to.as_deref(),
                    a.status,
                    a.status_reason.as_deref(),
                );
                crate::store::webhooks::enqueue(
                    conn,
                    &hooks,
                    "notification.suppressed",
                    &data,
                    a.created_at.timestamp_millis(),
                )?;
            }
        }
        Ok(results)
    });
    db.note_write(&result);
    result
}
