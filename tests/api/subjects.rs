use serde_json::json;

use crate::helpers::*;
use crate::on_both_backends;

fn entry<'a>(body: &'a serde_json::Value, event: &str) -> &'a serde_json::Value {
    body["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == event)
        .unwrap()
}

async fn put_replaces_patch_merges_and_null_resets(app: TestApp) {
    let t = admin_token();
    let initial = app.get("/settings/subjects", &t).await.json();
    assert_eq!(initial["subjects"].as_array().unwrap().len(), 12);
    assert!(initial["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["is_default"] == true));

    let put = app
        .put(
            "/settings/subjects",
            &t,
            &json!({"subjects": {
                "password_reset": "Reset your {{ portal_name }} password",
                "access_request_approved": "Access to {{ product_name }} granted"
            }}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let body = put.json();
    assert_eq!(
        entry(&body, "password_reset")["subject"],
        "Reset your {{ portal_name }} password"
    );
    assert_eq!(entry(&body, "password_reset")["is_default"], false);
    assert_eq!(
        entry(&body, "password_reset")["default_subject"],
        "Reset your password"
    );

    let patched = app
        .patch(
            "/settings/subjects",
            &t,
            &json!({"subjects": {"password_reset": null, "user_invited": "{{ inviter_name }} invited you"}}),
        )
        .await
        .json();
    assert_eq!(entry(&patched, "password_reset")["is_default"], true);
    assert_eq!(
        entry(&patched, "password_reset")["subject"],
        "Reset your password"
    );
    assert_eq!(
        entry(&patched, "access_request_approved")["subject"],
        "Access to {{ product_name }} granted"
    );
    assert_eq!(entry(&patched, "user_invited")["is_default"], false);

    // PUT replaces everything: what is left out goes back to its default.
    let replaced = app
        .put("/settings/subjects", &t, &json!({"subjects": {}}))
        .await
        .json();
    assert!(replaced["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["is_default"] == true));
    let again = app.get("/settings/subjects", &t).await.json();
    assert_eq!(again, replaced);
}

on_both_backends! {
    put_patch => put_replaces_patch_merges_and_null_resets;
}

#[tokio::test]
async fn each_entry_lists_its_recipient_and_variables() {
    let app = spawn_app().await;
    let body = app.get("/settings/subjects", &admin_token()).await.json();
    let created = entry(&body, "access_request_created");
    assert_eq!(created["recipient"], "admin");
    let names: Vec<&str> = created["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "user_name",
            "user_email",
            "product_name",
            "request_url",
            "portal_name",
            "portal_url"
        ]
    );
    assert_eq!(entry(&body, "change_request_updated")["recipient"], "user");
}

#[tokio::test]
async fn invalid_subjects_are_each_a_field_error() {
    let app = spawn_app().await;
    let reply = app
        .put(
            "/settings/subjects",
            &admin_token(),
            &json!({"subjects": {
                "nope": "Hello",
                "password_reset": "   ",
                "user_invited": "x".repeat(201),
                "user_activated": "Welcome\r\nBcc: eve@example.com",
                "user_deactivated": "{% if %}",
                "organization_registration_approved": "{{ product_name }} approved"
            }}),
        )
        .await;
    let mut fields = reply.field_errors();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("subjects.nope", "unknown_event"),
            ("subjects.organization_registration_approved", "unknown_variable"),
            ("subjects.password_reset", "empty"),
            ("subjects.user_activated", "line_break"),
            ("subjects.user_deactivated", "invalid_template"),
            ("subjects.user_invited", "too_long"),
        ]
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect::<Vec<_>>()
    );
    // Nothing was saved.
    let body = app.get("/settings/subjects", &admin_token()).await.json();
    assert!(body["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["is_default"] == true));
}

#[tokio::test]
async fn the_event_catalogue_is_public_and_complete() {
    let app = spawn_app().await;
    let reply = app.send(app.client.get(app.url("/events"))).await;
    assert_eq!(reply.status, 200);
    let events = reply.json()["events"].as_array().unwrap().clone();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for expected in [
        "password_reset",
        "access_request_created",
        "access_request_approved",
        "access_request_rejected",
        "user_registration_pending",
        "user_invited",
        "user_activated",
        "user_deactivated",
        "organization_registration_requested",
        "organization_registration_approved",
        "organization_registration_rejected",
        "change_request_updated",
    ] {
        assert!(names.contains(&expected), "{expected} missing");
    }
    let reset = events.iter().find(|e| e["event"] == "password_reset").unwrap();
    assert_eq!(reset["variables"][0]["name"], "reset_url");
    assert_eq!(reset["variables"][0]["required"], true);
    // Every variable carries an example value (previews and template checks use them).
    for event in &events {
        for v in event["variables"].as_array().unwrap() {
            assert!(
                v["example"].as_str().is_some_and(|e| !e.is_empty()),
                "{}: {v}",
                event["event"]
            );
        }
    }
}

#[tokio::test]
async fn a_saved_subject_is_used_by_the_very_next_render_even_while_the_catalog_is_cached() {
    async fn preview(app: &TestApp) -> String {
        let reply = app
            .post(
                "/settings/templates/preview",
                &admin_token(),
                &json!({"event": "user_deactivated"}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()["subject"].as_str().unwrap().to_string()
    }
    let app = spawn_app().await;
    // The first render caches the catalog; the write must end that cache at once.
    let before = preview(&app).await;
    let reply = app
        .patch(
            "/settings/subjects",
            &admin_token(),
            &json!({"subjects": {"user_deactivated": "Closed: {{ user_name }}"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let after = preview(&app).await;
    assert_ne!(before, after);
    assert!(after.starts_with("Closed: "), "{after}");
}
