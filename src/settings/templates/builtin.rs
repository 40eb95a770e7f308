//! The built-in templates embedded in the binary: a body per event and part, the layout, and the
//! default subjects. Trusted code, rendered in an environment of their own (HTML auto-escaped).

use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment};

/// Every built-in template, by name. A test checks that each event has both parts.
static TEMPLATES: &[(&str, &str)] = &[
    ("layout.txt", include_str!("builtin/layout.txt")),
    ("layout.html", include_str!("builtin/layout.html")),
    ("password_reset.txt", include_str!("builtin/password_reset.txt")),
    ("password_reset.html", include_str!("builtin/password_reset.html")),
    (
        "access_request_created.txt",
        include_str!("builtin/access_request_created.txt"),
    ),
    (
        "access_request_created.html",
        include_str!("builtin/access_request_created.html"),
    ),
    (
        "access_request_approved.txt",
        include_str!("builtin/access_request_approved.txt"),
    ),
    (
        "access_request_approved.html",
        include_str!("builtin/access_request_approved.html"),
    ),
    (
        "access_request_rejected.txt",
        include_str!("builtin/access_request_rejected.txt"),
    ),
    (
        "access_request_rejected.html",
        include_str!("builtin/access_request_rejected.html"),
    ),
    (
        "user_registration_pending.txt",
        include_str!("builtin/user_registration_pending.txt"),
    ),
    (
        "user_registration_pending.html",
        include_str!("builtin/user_registration_pending.html"),
    ),
    ("user_invited.txt", include_str!("builtin/user_invited.txt")),
    ("user_invited.html", include_str!("builtin/user_invited.html")),
    ("user_activated.txt", include_str!("builtin/user_activated.txt")),
    ("user_activated.html", include_str!("builtin/user_activated.html")),
    (
        "user_deactivated.txt",
        include_str!("builtin/user_deactivated.txt"),
    ),
    (
        "user_deactivated.html",
        include_str!("builtin/user_deactivated.html"),
    ),
    (
        "organization_registration_requested.txt",
        include_str!("builtin/organization_registration_requested.txt"),
    ),
    (
        "organization_registration_requested.html",
        include_str!("builtin/organization_registration_requested.html"),
    ),
    (
        "organization_registration_approved.txt",
        include_str!("builtin/organization_registration_approved.txt"),
    ),
    (
        "organization_registration_approved.html",
        include_str!("builtin/organization_registration_approved.html"),
    ),
    (
        "organization_registration_rejected.txt",
        include_str!("builtin/organization_registration_rejected.txt"),
    ),
    (
        "organization_registration_rejected.html",
        include_str!("builtin/organization_registration_rejected.html"),
    ),
    (
        "change_request_updated.txt",
        include_str!("builtin/change_request_updated.txt"),
    ),
    (
        "change_request_updated.html",
        include_str!("builtin/change_request_updated.html"),
    ),
];

pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(crate::sandbox::html_formatter);
        for (name, source) in TEMPLATES {
            env.add_template(name, source).expect("built-in templates parse");
        }
        // Default subjects, compiled once ("x.subject" is not .html: no escaping).
        for event in crate::events::EVENTS {
            env.add_template_owned(format!("{}.subject", event.name), event.default_subject)
                .expect("default subjects parse");
        }
        env
    })
}

/// The source of a built-in template (`{event}.html`, `{event}.txt`, `layout.html`, ...).
pub fn source(name: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
