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
