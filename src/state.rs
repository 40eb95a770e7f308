//! What every request handler shares, built once in `startup`: the database, keys,
//! configuration, mail policy, the dispatcher's wake-up signals, the SMTP test limiter and the
//! reactions to a settings change. Imports no feature: features hand theirs in through
//! [`Hooks`], and their own services are app data of their own (see `startup`).

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;

use crate::config::Config;
use crate::db::{Db, DbConnection, StoreError};
use crate::mail::MailContext;
use crate::rate_limit::RateLimiter;
use crate::secrets::{self, SecretCipher};

/// Wakes the dispatcher: a new notification, or changed settings.
#[derive(Default)]
pub struct Signals {
    pub work: Notify,
    pub settings: Notify,
}

/// Runs inside the transaction that saves new SMTP settings; returns how many rows it touched.
pub type SmtpReplaced = dyn Fn(&mut DbConnection, i64) -> Result<usize, StoreError> + Send + Sync;

/// What other features do when a settings document changes, registered by `startup` (the
/// delivery side subscribes to "SMTP settings replaced" without settings knowing of it).
pub struct Hooks {
    pub smtp_replaced: Box<SmtpReplaced>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            smtp_replaced: Box::new(|_, _| Ok(0)),
        }
    }
}

/// Shared by every request handler and the dispatcher.
pub struct AppState {
    pub db: Db,
    pub cipher: Arc<SecretCipher>,
    pub config: Arc<Config>,
    pub mail: MailContext,
    pub signals: Arc<Signals>,
    pub smtp_test_limiter: RateLimiter,
    pub hooks: Hooks,
    /// Batches validated, rendered and stored at once: one per core (at least two). More only
    /// add memory (each holds up to 1,000 rendered notifications), not throughput: the renders
    /// share the cores and the stores share one committer (BENCHMARKS.md, "RSS").
    pub batch_permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Settings changed: the dispatcher re-reads them and releases held notifications at once.
    pub fn settings_changed(&self) {
        self.signals.settings.notify_one();
    }

    /// New work is queued.
    pub fn wake_dispatcher(&self) {
        self.signals.work.notify_one();
    }

    /// Opens the database (applying migrations) and loads keys and mail policy.
    pub async fn build(config: Config, hooks: Hooks) -> anyhow::Result<Self> {
        crate::mail::install_crypto_provider();
        let key = secrets::load_or_create_secret_key(&config)?;
        let mail = MailContext::from_config(&config)?;
        let url = config.database_url.clone();
        let pool_size = config.db_pool_size;
        let db = tokio::task::spawn_blocking(move || Db::connect(&url, pool_size))
            .await
            .context("database setup panicked")??;
        Ok(Self {
            batch_permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            )),
            db,
            cipher: Arc::new(SecretCipher::new(&key)),
            mail,
            signals: Arc::new(Signals::default()),
            smtp_test_limiter: RateLimiter::new(config.smtp_test_rate_per_minute),
            hooks,
            config: Arc::new(config),
        })
    }
}
