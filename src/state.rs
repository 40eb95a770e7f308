//! What every request handler shares: the database, keys, configuration, mail policy, the
//! dispatcher's wake-up signals, the SMTP test limiter and the intake. Imports no handler.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::db::Db;
use crate::mail::MailContext;
use crate::notifications::dispatcher::Signals;
use crate::notifications::intake::Intake;
use crate::rate_limit::RateLimiter;
use crate::secrets::{self, SecretCipher};

/// Shared by every request handler and the dispatcher.
pub struct AppState {
    pub db: Db,
    pub cipher: Arc<SecretCipher>,
    pub config: Arc<Config>,
    pub mail: MailContext,
    pub signals: Arc<Signals>,
    pub smtp_test_limiter: RateLimiter,
    pub intake: Intake,
    /// Templates, subjects, branding and default locale, as of their last change.
    pub catalog: Arc<crate::settings::templates::CatalogCache>,
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

    /// The template catalog: from memory while it is fresh, else checked against the database
    /// (which a request for every notification would otherwise pay).
    pub async fn catalog(&self) -> Result<Arc<crate::settings::templates::Catalog>, crate::error::ApiError> {
        if let Some(catalog) = self.catalog.fresh() {
            return Ok(catalog);
        }
        let cache = self.catalog.clone();
        Ok(self.db.read(move |conn| cache.get(conn)).await?)
    }

    /// New work is queued.
    pub fn wake_dispatcher(&self) {
        self.signals.work.notify_one();
    }

    /// Opens the database (applying migrations) and loads keys and mail policy.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::mail::install_crypto_provider();
        crate::metrics::handle();
        let key = secrets::load_or_create_secret_key(&config)?;
        let mail = MailContext::from_config(&config)?;
        let url = config.database_url.clone();
        let pool_size = config.db_pool_size;
        let db = tokio::task::spawn_blocking(move || Db::connect(&url, pool_size))
            .await
            .context("database setup panicked")??;
        Ok(Self {
            intake: Intake::start(db.clone()),
            catalog: Arc::default(),
            batch_permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            )),
            db,
            cipher: Arc::new(SecretCipher::new(&key)),
            mail,
            signals: Arc::new(Signals::default()),
            smtp_test_limiter: RateLimiter::new(config.smtp_test_rate_per_minute),
            config: Arc::new(config),
        })
    }
}
