//! The admin console's files: served by the binary under a strict Content-Security-Policy, and
//! asking for nothing from anywhere else.

use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_console_is_served_with_a_policy_that_allows_only_this_origin_and_no_framing() {
    let app = spawn_app().await;
    let page = get(&app, "/console/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    // Inline styles are allowed (mail HTML in the preview needs them), inline script never.
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert_eq!(script_src.trim(), "script-src 'self'", "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script type="module" src="app.js"></script>"#),
        "{html}"
    );
    // No inline script: every <script> has a src.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script type=\"module\" src=").count()
    );
    let script = get(&app, "/console/app.js").await;
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let css = get(&app, "/console/style.css").await;
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
}

#[tokio::test]
async fn the_console_asks_for_nothing_from_another_origin() {
    let app = spawn_app().await;
    for file in ["/console/", "/console/app.js", "/console/style.css"] {
        let text = get(&app, file).await.text().await.unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{file} names another origin"
        );
        assert!(
            !text.contains("localStorage") && !text.contains("document.cookie"),
            "{file} keeps the token outside sessionStorage"
        );
    }
}

#[tokio::test]
async fn the_root_links_to_the_console_and_unknown_console_files_are_404() {
    let app = spawn_app().await;
    let index: serde_json::Value = get(&app, "/").await.json().await.unwrap();
    assert_eq!(index["console"], "/console/");
    let bare = app
        .client
        .get(format!("{}/console", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 200, "the redirect to /console/ is followed");
    assert_eq!(bare.url().path(), "/console/");
    let missing = get(&app, "/console/nothing-here.js").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    assert_eq!(get(&app, "/console/../Cargo.toml").await.status(), 404);
}
