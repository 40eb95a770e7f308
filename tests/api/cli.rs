use std::process::Command;

use crate::helpers::*;

fn mailroom() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailroom"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILROOM_")) {
        cmd.env_remove(k);
    }
    cmd
}

#[test]
fn a_bad_configuration_value_stops_startup_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("MAILROOM_DATABASE_URL", "mysql://localhost/mailroom"),
        ("MAILROOM_BIND", "not-an-address"),
        ("MAILROOM_SECRET_KEY", "too-short"),
        ("MAILROOM_CORS_ORIGINS", "admin.example.com/"),
    ] {
        let out = mailroom()
            .current_dir(dir.path())
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}

#[test]
fn openapi_prints_the_committed_document() {
    let out = mailroom().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        printed == committed,
        "run `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn a_first_start_without_a_secret_generates_one_and_mailroom_token_mints_against_it() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAILROOM_JWT_SECRET", "")])
        .await
        .unwrap();
    let secret_file = app.dir.path().join("jwt-secret");
    assert!(secret_file.exists(), "no secret was generated");
    // The test secret does not open the API any more: only the generated one does.
    app.get("/settings/smtp", &admin_token())
        .await
        .problem(401, "unauthorized");

    let out = mailroom()
        .args([
            "token",
            "--sub",
            "ops",
            "--scope",
            "settings:read",
            "--ttl",
            "10m",
        ])
        .env("MAILROOM_DATA_DIR", app.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim_end();
    assert_eq!(
        token.split('.').count(),
        3,
        "stdout must be the bare token: {token:?}"
    );
    let reply = app.get("/settings/smtp", token).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    app.put(
        "/settings/admin-email",
        token,
        &serde_json::json!({"email": "a@example.com"}),
    )
    .await
    .problem(403, "insufficient_scope");
}

#[test]
fn token_refuses_an_unknown_scope() {
    let dir = tempfile::tempdir().unwrap();
    let out = mailroom()
        .args(["token", "--sub", "ops", "--scope", "settings:everything"])
        .env("MAILROOM_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("settings:everything"));
}

#[test]
fn help_lists_every_environment_variable_for_mailroom_and_mailroom_serve() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let out = mailroom().args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for v in mailroom::config::VARIABLES {
            assert!(help.contains(v.name), "{args:?} does not list {}", v.name);
        }
        assert!(help.contains("--bind <ADDR:PORT>"), "{help}");
        assert!(help.contains("--database-url <URL>"), "{help}");
    }
}

#[test]
fn the_sample_environment_file_lists_every_variable_at_its_default() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mailroom.env")).unwrap();
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mailroom.service")).unwrap();
    for v in mailroom::config::VARIABLES {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("#{}=", v.name)))
            .unwrap_or_else(|| panic!("deploy/mailroom.env lacks {}", v.name));
        let value = &line[v.name.len() + 2..];
        // Set by the unit itself, or a literal default, or none (generated or unset).
        let expected = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("Environment={}=", v.name)))
            .unwrap_or(if v.default.contains(' ') { "" } else { v.default });
        assert_eq!(value, expected, "{}", v.name);
    }
}

#[tokio::test]
async fn the_bind_and_database_url_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flag_db = dir.path().join("flag.db");
    let mut process = mailroom()
        .envs(base_vars(
            dir.path(),
            &format!("sqlite://{}", dir.path().join("env.db").display()),
        ))
        .env("MAILROOM_BIND", "127.0.0.1:1")
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &format!("sqlite://{}", flag_db.display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::child::wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let _ = process.kill();
    let _ = process.wait();
    assert!(flag_db.exists(), "--database-url was not used");
    assert!(
        !dir.path().join("env.db").exists(),
        "MAILROOM_DATABASE_URL won over the flag"
    );
}

#[tokio::test]
async fn the_root_points_at_the_documentation_without_a_token() {
    let app = spawn_app().await;
    let reply = reqwest::get(format!("{}/", app.address)).await.unwrap();
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["docs"], "/docs/");
    assert_eq!(body["openapi"], "/openapi.json");
    assert_eq!(body["name"], "mailroom");
    for path in ["/docs/", "/openapi.json"] {
        let reply = reqwest::get(format!("{}{path}", app.address)).await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }
}
