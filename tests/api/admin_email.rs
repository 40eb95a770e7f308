use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

async fn admin_email_is_unconfigured_then_set_then_cleared(app: TestApp) {
    let t = admin_token();
    let before = app.get("/settings/admin-email", &t).await;
    assert_eq!(before.status, 200);
    assert_eq!(before.json()["configured"], false);
    let put = app
        .put(
            "/settings/admin-email",
            &t,
            &json!({"email": "admins@example.com"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let got = app.get("/settings/admin-email", &t).await.json();
    assert_eq!(got["configured"], true);
    assert_eq!(got["email"], "admins@example.com");
    assert_eq!(got["updated_by"], "test-admin");
    let cleared = app
        .put("/settings/admin-email", &t, &json!({"email": null}))
        .await
        .json();
    assert_eq!(cleared["configured"], false);
}

on_both_backends! {
    lifecycle => admin_email_is_unconfigured_then_set_then_cleared;
}

#[tokio::test]
async fn a_missing_or_invalid_admin_email_is_a_field_error() {
    let app = spawn_app().await;
    let t = admin_token();
    for (body, code) in [
        (json!({}), "required"),
        (json!({"email": 42}), "invalid_type"),
        (json!({"email": "admins"}), "invalid_email"),
        (json!({"email": "a@example.com, b@example.com"}), "invalid_email"),
        (
            json!({"email": "a@example.com\r\nBcc: eve@example.com"}),
            "line_break",
        ),
    ] {
        let fields = app.put("/settings/admin-email", &t, &body).await.field_errors();
        assert_eq!(fields, vec![("email".to_string(), code.to_string())], "{body}");
    }
}
