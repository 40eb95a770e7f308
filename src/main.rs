//! The `mailroom` binary: a thin CLI over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// glibc's malloc showed up at about 10% of the accept path's profile (many small JSON and
// template allocations across threads); mimalloc handles that pattern better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use mailroom::config::Config;
use mailroom::startup::{self, Application};

/// mimalloc v3's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h; the
/// constants in libmimalloc-sys follow v2 and lack it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS 50 ms after it is freed instead of mimalloc's 1 s, which
/// in practice meant never once the service went idle: it purges only when it is called. With
/// arena memory committed on demand (`.cargo/config.toml`) and one batch per core at a time, the
/// RSS after accepting 1M fell from 171 MB to 79-91 MB at the same rate (BENCHMARKS.md).
fn return_freed_memory_promptly() {
    // SAFETY: sets one of mimalloc's option values; it is read each time a purge is scheduled.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 50) };
}

#[derive(Parser)]
#[command(
    name = "mailroom",
    version,
    about = "Email notifications for portals and internal tools",
    after_help = mailroom::config::variables_help()
)]
struct Cli {
    /// A TOML file whose keys are the MAILROOM_* variables without the prefix, in lower case
    /// (e.g. `bind = "0.0.0.0:8080"`). Environment variables override it.
    #[arg(long, global = true, value_name = "FILE", env = "MAILROOM_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR:PORT", env = "MAILROOM_BIND")]
    bind: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://mailroom.db].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "MAILROOM_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the delivery dispatcher (the default).
    #[command(after_help = mailroom::config::variables_help())]
    Serve,
    /// Run only the delivery dispatcher (no HTTP API).
    Worker,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Mint an HS256 token with the configured secret and print it.
    Token {
        /// Scopes, space- or comma-separated, or repeated: settings:read settings:write smtp:test
        /// notifications:send notifications:read.
        #[arg(long, num_args = 1.., required = true)]
        scope: Vec<String>,
        /// The subject: who the token stands for (recorded as updated_by).
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. 3600, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 3600, 30m, 1h, 7d)"))?,
    };
    if d.is_zero() {
        return Err("the lifetime must be positive".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let cli = Cli::parse();
    mailroom::telemetry::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailroom: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Openapi = command {
        print!(
            "{}",
            mailroom::openapi::to_pretty_json(&mailroom::openapi::document())
        );
        return Ok(());
    }
    // Flags win over the environment and the file (clap has already read the environment).
    let mut overrides = Vec::new();
    if let Some(bind) = cli.bind {
        overrides.push(("MAILROOM_BIND", bind));
    }
    if let Some(url) = cli.database_url {
        overrides.push(("MAILROOM_DATABASE_URL", url));
    }
    let config = Config::load_with(cli.config.as_deref(), &overrides)?;
    match command {
        Command::Serve => serve(config),
        Command::Worker => worker(config),
        Command::Migrate => {
            mailroom::db::Db::connect(&config.database_url, 1)?;
            eprintln!(
                "mailroom: migrations applied to the {} database",
                config.database_url.backend_name()
            );
            Ok(())
        }
        Command::Token { scope, sub, ttl } => {
            let (_, secret) = startup::jwt_verifier(&config)?;
            let secret = secret.ok_or_else(|| {
                anyhow::anyhow!("MAILROOM_JWT_SECRET: tokens can only be minted with an HS256 secret, and only a public key is configured")
            })?;
            let scopes: Vec<String> = scope
                .iter()
                .flat_map(|s| s.split([' ', ',']))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = scopes
                .iter()
                .find(|s| !mailroom::auth::ALL_SCOPES.contains(&s.as_str()))
            {
                anyhow::bail!(
                    "unknown scope '{bad}'; scopes are: {}",
                    mailroom::auth::ALL_SCOPES.join(" ")
                );
            }
            let token = mailroom::auth::mint_token(
                &secret,
                &sub,
                &scopes,
                ttl,
                config.jwt_issuer.as_deref(),
                config.jwt_audience.as_deref(),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Openapi => Ok(()),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let bind = config.bind;
        let backend = config.database_url.backend_name();
        let app = Application::build(config).await?;
        tracing::info!(%bind, port = app.port(), backend, "mailroom listening");
        app.run_until_stopped().await?;
        Ok(())
    })
}

fn worker(config: Config) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async move {
        let state = mailroom::startup::AppState::build(config, Default::default()).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let webhooks = tokio::spawn(mailroom::startup::webhook_sender(&state).run(stopped.clone()));
        let dispatcher = tokio::spawn(mailroom::startup::dispatcher(&state).run(stopped));
        startup::shutdown_signal().await;
        tracing::info!("stopping: finishing messages in flight");
        let _ = stop.send(true);
        dispatcher.await?;
        webhooks.await?;
        Ok(())
    })
}
