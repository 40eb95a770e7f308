//! Reading the configuration from variables and files.

use super::*;

fn config(base: u64, max: u64) -> DeliveryConfig {
    DeliveryConfig {
        enabled: true,
        concurrency: 1,
        max_attempts: 10,
        retry_base: Duration::from_secs(base),
        retry_max: Duration::from_secs(max),
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
        batch_size: 10,
        shutdown_grace: Duration::from_secs(10),
    }
}

#[test]
fn backoff_doubles_within_jitter_and_stops_at_the_maximum() {
    let c = config(120, 8 * 3600);
    for attempt in 1..=12u32 {
        let full = Duration::from_secs(120 * 2u64.pow(attempt - 1)).min(c.retry_max);
        let d = c.backoff(attempt);
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
    // Ten attempts with the defaults span roughly a day, whatever the jitter draws.
    for _ in 0..20 {
        let total: Duration = (1..10u32).map(|a| c.backoff(a)).sum();
        assert!(
            total > Duration::from_secs(8 * 3600) && total < Duration::from_secs(30 * 3600),
            "{total:?}"
        );
    }
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_to_sqlite_in_the_working_directory_on_port_8080() {
    let config = Config::from_vars(&BTreeMap::new()).unwrap();
    assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database_url, DatabaseUrl::Sqlite("mailroom.db".into()));
    assert_eq!(config.data_dir, PathBuf::from("."));
}

#[test]
fn an_unknown_database_scheme_is_an_error_naming_the_variable() {
    let err = Config::from_vars(&vars(&[("MAILROOM_DATABASE_URL", "mysql://x")])).unwrap_err();
    assert_eq!(err.var, "MAILROOM_DATABASE_URL");
    let err = Config::from_vars(&vars(&[("MAILROOM_DATABASE_URL", "mailroom.db")])).unwrap_err();
    assert_eq!(err.var, "MAILROOM_DATABASE_URL");
}

#[test]
fn bad_values_name_their_variable_and_never_echo_secrets() {
    for (var, value) in [
        ("MAILROOM_BIND", "localhost"),
        ("MAILROOM_JWT_SECRET", "short"),
        ("MAILROOM_SECRET_KEY", "not-a-key-hunter2"),
        ("MAILROOM_CORS_ORIGINS", "admin.example.com"),
        ("MAILROOM_DELIVERY_CONCURRENCY", "0"),
    ] {
        let err = Config::from_vars(&vars(&[(var, value)])).unwrap_err();
        assert_eq!(err.var, var);
        assert!(err.to_string().starts_with(var));
        if var.contains("SECRET") {
            assert!(!err.to_string().contains(value), "{err}");
        }
    }
}

#[test]
fn secret_keys_are_accepted_as_base64_or_hex() {
    let hex = "00".repeat(32);
    assert_eq!(parse_key(&hex).unwrap(), [0u8; 32]);
    let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    assert_eq!(parse_key(&b64).unwrap(), [7u8; 32]);
    assert!(parse_key("AAAA").is_err());
}

#[test]
fn the_sqlite_data_directory_is_beside_the_database_file() {
    let config = Config::from_vars(&vars(&[(
        "MAILROOM_DATABASE_URL",
        "sqlite:///var/lib/mailroom/db.sqlite",
    )]))
    .unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/mailroom"));
}
