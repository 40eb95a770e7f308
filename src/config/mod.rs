//! Configuration: an optional TOML file overlaid by `MAILROOM_*` environment variables.
//!
//! Every value is checked here, at load time, so a bad value stops startup with a message that
//! names the variable instead of surfacing later as a confusing runtime failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use secrecy::{SecretBox, SecretString};

/// A configuration value that failed to parse, named by its environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

fn config_error(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        message: message.into(),
    }
}

/// Where data lives, chosen by the URL scheme; anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://mailroom.db".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_string()))
        } else {
            Err("unsupported database URL scheme: use sqlite://PATH or postgres://...".into())
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Browser origins allowed to call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: DatabaseUrl,
    /// Holds generated secrets (JWT secret, encryption key) when none are configured.
    pub data_dir: PathBuf,
    pub db_pool_size: u32,
    pub jwt_secret: Option<SecretString>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// Where an OpenID Connect provider publishes its signing keys (`MAILROOM_JWT_JWKS_URL`).
    pub jwt_jwks_url: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub secret_key: Option<SecretBox<[u8; 32]>>,
    pub secret_key_file: Option<PathBuf>,
    pub cors_origins: CorsOrigins,
    /// Per-subject limit on `POST /settings/smtp/test` calls.
    pub smtp_test_rate_per_minute: u32,
    pub smtp_allowed_hosts: Option<Vec<String>>,
    pub smtp_ca_file: Option<PathBuf>,
    pub smtp_helo_name: Option<String>,
    pub delivery: DeliveryConfig,
    /// `GET /metrics` without a token (`MAILROOM_METRICS_PUBLIC`), for scrapers on a private network.
    pub metrics_public: bool,
    /// How long a request body may take to arrive, from the end of its headers.
    pub body_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub enabled: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub batch_size: i64,
    /// How long a stopping instance waits for sends in flight before dropping them (their claims
    /// are released, so another attempt sends them later).
    pub shutdown_grace: Duration,
}

impl DeliveryConfig {
    /// The delay before retry `attempt` (1-based): exponential from `retry_base`, at most
    /// `retry_max`, with equal jitter (half the delay fixed, half random) so that mail deferred
    /// together does not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let exp = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.retry_max);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// One configuration variable: its name, its default as text, and what it does. The list drives
/// `mailroom --help`, the TOML keys and `deploy/mailroom.env` (a test keeps that file in step).
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable { name, default, help }
}

/// Every variable we read; a TOML key is the variable name without the prefix, in lower case.
pub const VARIABLES: &[Variable] = &[
    var(
        "MAILROOM_BIND",
        "127.0.0.1:8080",
        "address:port the HTTP API listens on (--bind)",
    ),
    var(
        "MAILROOM_DATABASE_URL",
        "sqlite://mailroom.db",
        "sqlite://PATH or postgres://USER@HOST/DB (--database-url)",
    ),
    var(
        "MAILROOM_DATA_DIR",
        "the SQLite file's directory, else .",
        "where generated secrets (jwt-secret, secret.key) are kept",
    ),
    var(
        "MAILROOM_DB_POOL_SIZE",
        "8",
        "database connections per process (1-256)",
    ),
    var(
        "MAILROOM_JWT_SECRET",
        "generated into DATA_DIR/jwt-secret",
        "HS256 secret for tokens, at least 32 characters",
    ),
    var(
        "MAILROOM_JWT_PUBLIC_KEY_FILE",
        "",
        "PEM public key (RS256/ES256) to verify tokens with",
    ),
    var("MAILROOM_JWT_ISSUER", "", "required `iss` of tokens"),
    var("MAILROOM_JWT_AUDIENCE", "", "required `aud` of tokens"),
    var(
        "MAILROOM_SECRET_KEY",
        "generated into DATA_DIR/secret.key",
        "32-byte key (base64 or hex) that encrypts stored passwords",
    ),
    var("MAILROOM_SECRET_KEY_FILE", "", "a file holding that key"),
    var(
        "MAILROOM_CORS_ORIGINS",
        "",
        "browser origins allowed to call the API, comma-separated, or *",
    ),
    var(
        "MAILROOM_SMTP_TEST_RATE_PER_MINUTE",
        "10",
        "SMTP tests per token subject and minute",
    ),
    var(
        "MAILROOM_SMTP_ALLOWED_HOSTS",
        "",
        "when set, the only SMTP hosts mail may connect to, comma-separated",
    ),
    var(
        "MAILROOM_SMTP_CA_FILE",
        "",
        "extra PEM CA certificates for SMTP TLS",
    ),
    var("MAILROOM_SMTP_HELO_NAME", "the host name", "name sent in EHLO"),
    var(
        "MAILROOM_DELIVERY_ENABLED",
        "true",
        "run the delivery dispatcher in `serve`",
    ),
    var(
        "MAILROOM_DELIVERY_CONCURRENCY",
        "8",
        "SMTP transactions in flight per process",
    ),
    var(
        "MAILROOM_DELIVERY_MAX_ATTEMPTS",
        "10",
        "attempts before a notification fails",
    ),
    var(
        "MAILROOM_DELIVERY_RETRY_BASE_SECONDS",
        "120",
        "first retry delay (doubles each attempt)",
    ),
    var(
        "MAILROOM_DELIVERY_RETRY_MAX_SECONDS",
        "28800",
        "longest retry delay",
    ),
    var(
        "MAILROOM_DELIVERY_LEASE_SECONDS",
        "6",
        "how long a claim lasts without renewal (a crashed instance's mail is retried after it)",
    ),
    var(
        "MAILROOM_DELIVERY_POLL_MILLISECONDS",
        "1000",
        "how often the queue is read when idle",
    ),
    var(
        "MAILROOM_DELIVERY_BATCH_SIZE",
        "100",
        "most notifications claimed per query (claims follow the pace: about 0.1 s of sending)",
    ),
    var(
        "MAILROOM_SHUTDOWN_GRACE_SECONDS",
        "10",
        "how long a stopping process waits for sends in flight",
    ),
    var(
        "MAILROOM_METRICS_PUBLIC",
        "false",
        "serve GET /metrics without a token",
    ),
    var(
        "MAILROOM_BODY_TIMEOUT_SECONDS",
        "30",
        "how long a request body may take to arrive (slower ones get 408)",
    ),
];

fn is_known(name: &str) -> bool {
    VARIABLES.iter().any(|v| v.name == name)
}

/// The environment section of `--help`: every variable with its default.
pub fn variables_help() -> String {
    let mut out = String::from(
        "Environment (a --config TOML file takes the same names without MAILROOM_, in lower case):\n",
    );
    for v in VARIABLES {
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", v.default)
        };
        out.push_str(&format!("  {:<38} {}{default}\n", v.name, v.help));
    }
    out.push_str("  MAILROOM_CONFIG                        the TOML file (--config)\n");
    out
}

impl Config {
    /// Loads the TOML file (if any: `--config` or `MAILROOM_CONFIG`), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, &[])
    }

    /// Like [`Config::load`], with command-line values (variable name, value) above everything.
    pub fn load_with(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("MAILROOM_"))
            .collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get("MAILROOM_CONFIG").map(PathBuf::from));
        let mut vars = match file {
            Some(path) => read_toml(&path)?,
            None => BTreeMap::new(),
        };
        for (k, v) in env {
            if k == "MAILROOM_CONFIG" || k.starts_with("MAILROOM_TEST_") {
                continue;
            }
            if !is_known(&k) {
                tracing::warn!(variable = %k, "ignoring unknown MAILROOM_ variable");
                continue;
            }
            vars.insert(k, v);
        }
        for (name, value) in overrides {
            vars.insert(name.to_string(), value.clone());
        }
        Self::from_vars(&vars)
    }

    /// Builds a configuration from variable names to values (tests use this directly).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|s| s.trim()).filter(|s| !s.is_empty());

        let bind = match get("MAILROOM_BIND") {
            Some(v) => v.parse().map_err(|_| {
                config_error(
                    "MAILROOM_BIND",
                    format!("'{v}' is not an address:port such as 127.0.0.1:8080"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let database_url = DatabaseUrl::parse(get("MAILROOM_DATABASE_URL").unwrap_or("sqlite://mailroom.db"))
            .map_err(|m| config_error("MAILROOM_DATABASE_URL", m))?;
        let data_dir = match get("MAILROOM_DATA_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => database_url.default_data_dir(),
        };
        let jwt_secret = match get("MAILROOM_JWT_SECRET") {
            Some(s) if s.len() < 32 => {
                return Err(config_error(
                    "MAILROOM_JWT_SECRET",
                    "must be at least 32 characters long",
                ))
            }
            Some(s) => Some(SecretString::from(s.to_string())),
            None => None,
        };
        let jwt_jwks_url = jwks_url(get("MAILROOM_JWT_JWKS_URL"))?;
        let jwt_public_key_file = get("MAILROOM_JWT_PUBLIC_KEY_FILE").map(PathBuf::from);
        if let Some(path) = &jwt_public_key_file {
            if !path.is_file() {
                return Err(config_error(
                    "MAILROOM_JWT_PUBLIC_KEY_FILE",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        let secret_key = get("MAILROOM_SECRET_KEY")
            .map(|v| parse_key(v).map(|k| SecretBox::new(Box::new(k))))
            .transpose()
            .map_err(|m| config_error("MAILROOM_SECRET_KEY", m))?;
        let cors_origins = match get("MAILROOM_CORS_ORIGINS") {
            None => CorsOrigins::List(Vec::new()),
            Some("*") => CorsOrigins::Any,
            Some(list) => CorsOrigins::List(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|o| check_origin(o).map_err(|m| config_error("MAILROOM_CORS_ORIGINS", m)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let smtp_allowed_hosts = get("MAILROOM_SMTP_ALLOWED_HOSTS").map(|list| {
            list.split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
        let smtp_ca_file = get("MAILROOM_SMTP_CA_FILE").map(PathBuf::from);
        if let Some(path) = &smtp_ca_file {
            if !path.is_file() {
                return Err(config_error(
                    "MAILROOM_SMTP_CA_FILE",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }

        let delivery = delivery_from_vars(vars)?;

        Ok(Self {
            bind,
            database_url,
            data_dir,
            db_pool_size: parse_num(vars, "MAILROOM_DB_POOL_SIZE", 8, 1, 256)? as u32,
            jwt_secret,
            jwt_public_key_file,
            jwt_jwks_url,
            jwt_issuer: get("MAILROOM_JWT_ISSUER").map(str::to_string),
            jwt_audience: get("MAILROOM_JWT_AUDIENCE").map(str::to_string),
            secret_key,
            secret_key_file: get("MAILROOM_SECRET_KEY_FILE").map(PathBuf::from),
            cors_origins,
            smtp_test_rate_per_minute: parse_num(vars, "MAILROOM_SMTP_TEST_RATE_PER_MINUTE", 10, 1, 10_000)?
                as u32,
            smtp_allowed_hosts,
            smtp_ca_file,
            smtp_helo_name: get("MAILROOM_SMTP_HELO_NAME").map(str::to_string),
            delivery,
            metrics_public: parse_bool(vars, "MAILROOM_METRICS_PUBLIC", false)?,
            body_timeout: Duration::from_secs(parse_num(vars, "MAILROOM_BODY_TIMEOUT_SECONDS", 30, 1, 3600)?),
        })
    }
}

impl DatabaseUrl {
    /// Where keys live when `MAILROOM_DATA_DIR` is not set: beside the SQLite file, else here.
    fn default_data_dir(&self) -> PathBuf {
        match self {
            Self::Sqlite(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            Self::Postgres(_) => PathBuf::from("."),
        }
    }
}

/// `MAILROOM_JWT_JWKS_URL`: an http(s) URL (the address policy is applied when it is fetched).
fn jwks_url(value: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(url) = value else {
        return Ok(None);
    };
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") => Ok(Some(url.to_string())),
        _ => Err(config_error(
            "MAILROOM_JWT_JWKS_URL",
            format!("'{url}' is not an https:// (or, to loopback, http://) URL"),
        )),
    }
}

/// The `MAILROOM_DELIVERY_*` variables and the shutdown grace.
fn delivery_from_vars(vars: &BTreeMap<String, String>) -> Result<DeliveryConfig, ConfigError> {
    Ok(DeliveryConfig {
        enabled: parse_bool(vars, "MAILROOM_DELIVERY_ENABLED", true)?,
        concurrency: parse_num(vars, "MAILROOM_DELIVERY_CONCURRENCY", 8, 1, 1024)? as usize,
        max_attempts: parse_num(vars, "MAILROOM_DELIVERY_MAX_ATTEMPTS", 10, 1, 100)? as u32,
        retry_base: Duration::from_secs(parse_num(
            vars,
            "MAILROOM_DELIVERY_RETRY_BASE_SECONDS",
            120,
            1,
            86_400,
        )?),
        retry_max: Duration::from_secs(parse_num(
            vars,
            "MAILROOM_DELIVERY_RETRY_MAX_SECONDS",
            8 * 3600,
            1,
            7 * 86_400,
        )?),
        lease: Duration::from_secs(parse_num(vars, "MAILROOM_DELIVERY_LEASE_SECONDS", 6, 1, 86_400)?),
        poll_interval: Duration::from_millis(parse_num(
            vars,
            "MAILROOM_DELIVERY_POLL_MILLISECONDS",
            1000,
            10,
            600_000,
        )?),
        batch_size: parse_num(vars, "MAILROOM_DELIVERY_BATCH_SIZE", 100, 1, 10_000)? as i64,
        shutdown_grace: Duration::from_secs(parse_num(vars, "MAILROOM_SHUTDOWN_GRACE_SECONDS", 10, 0, 3600)?),
    })
}

fn read_toml(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error("MAILROOM_CONFIG", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| config_error("MAILROOM_CONFIG", format!("{}: {e}", path.display())))?;
    let mut vars = BTreeMap::new();
    for (key, value) in table {
        let var = format!("MAILROOM_{}", key.to_ascii_uppercase());
        if !is_known(&var) {
            return Err(config_error(
                "MAILROOM_CONFIG",
                format!("{}: unknown key '{key}'", path.display()),
            ));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        vars.insert(var, value);
    }
    Ok(vars)
}

fn parse_num(
    vars: &BTreeMap<String, String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match vars.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(config_error(
                name,
                format!("'{v}' is not a whole number between {min} and {max}"),
            )),
        },
    }
}

fn parse_bool(vars: &BTreeMap<String, String>, name: &str, default: bool) -> Result<bool, ConfigError> {
    match vars.get(name).map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(config_error(name, format!("'{v}' is not true or false"))),
    }
}

/// A 32-byte key written as base64 (standard or URL-safe) or 64 hex digits.
pub fn parse_key(value: &str) -> Result<[u8; 32], String> {
    let value = value.trim();
    let bytes = if value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(value))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value))
            .ok()
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            "must be 32 bytes written as base64 or 64 hex digits (e.g. `openssl rand -base64 32`)".to_string()
        })
}

fn check_origin(origin: &str) -> Result<String, String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("'{origin}' is not an origin such as https://admin.example.com"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(format!(
            "'{origin}' is not an origin such as https://admin.example.com (no path, no trailing slash)"
        ));
    }
    Ok(origin.to_string())
}

#[cfg(test)]
mod tests;
