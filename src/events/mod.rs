//! The catalogue of notification events: who receives each, its template variables, its default
//! subject and lifetime. The portal's eleven events plus the registry's change-request event.

pub mod http;

use serde::Serialize;
use utoipa::ToSchema;

/// Who an event's email goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// The address given in the notification (`to`).
    User,
    /// The configured admin address (`PUT /settings/admin-email`), unless `to` is given.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Variable {
    pub name: &'static str,
    pub required: bool,
    /// A realistic value, used for previews and to check templates when they are saved.
    pub example: &'static str,
}

#[derive(Debug)]
pub struct Event {
    pub name: &'static str,
    pub description: &'static str,
    pub recipient: Recipient,
    /// Event-specific variables; [`COMMON_VARIABLES`] are accepted by every event as well.
    pub variables: &'static [Variable],
    pub default_subject: &'static str,
    /// How long an undelivered notification stays worth sending.
    pub default_ttl_seconds: i64,
}

/// The longest value a notification's data may give a variable, in characters.
pub const MAX_VALUE_CHARS: usize = 10_000;

/// Accepted by every event.
pub const COMMON_VARIABLES: &[Variable] = &[opt("portal_name"), opt("portal_url")];

const fn req(name: &'static str) -> Variable {
    Variable {
        name,
        required: true,
        example: example_value(name),
    }
}

const fn opt(name: &'static str) -> Variable {
    Variable {
        name,
        required: false,
        example: example_value(name),
    }
}

/// The example value of a variable, by its name.
const fn example_value(name: &'static str) -> &'static str {
    match name.as_bytes() {
        b"change_request_id" => "CR-1042",
        b"change_request_url" => "https://registry.example.com/change-requests/CR-1042",
        b"expires_in_minutes" => "60",
        b"invite_url" => "https://portal.example.com/invitations/8f3c2a",
        b"inviter_name" => "Grace Hopper",
        b"login_url" => "https://portal.example.com/login",
        b"organization_name" => "Example Corp",
        b"portal_name" => "Developer Portal",
        b"portal_url" => "https://portal.example.com",
        b"product_name" => "Payments API",
        b"reason" => "The request did not say which project needs access.",
        b"request_url" => "https://portal.example.com/requests/517",
        b"reset_url" => "https://portal.example.com/reset-password?token=3b9e1f",
        b"review_url" => "https://portal.example.com/admin/reviews/517",
        b"status" => "approved",
        b"title" => "Update the billing contact",
        b"user_email" => "ada@example.com",
        b"user_name" => "Ada Lovelace",
        _ => "example",
    }
}

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

pub static EVENTS: &[Event] = &[
    Event {
        name: "password_reset",
        description: "A user asked to reset their password.",
        recipient: Recipient::User,
        variables: &[req("reset_url"), opt("user_name"), opt("expires_in_minutes")],
        default_subject: "Reset your password",
        default_ttl_seconds: HOUR,
    },
    Event {
        name: "access_request_created",
        description: "A user requested access to an API product.",
        recipient: Recipient::Admin,
        variables: &[
            req("user_name"),
            req("user_email"),
            req("product_name"),
            opt("request_url"),
        ],
        default_subject: "New access request for {{ product_name }}",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "access_request_approved",
        description: "A user's access request was approved.",
        recipient: Recipient::User,
        variables: &[req("product_name"), opt("user_name")],
        default_subject: "Your access request for {{ product_name }} was approved",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "access_request_rejected",
        description: "A user's access request was rejected.",
        recipient: Recipient::User,
        variables: &[req("product_name"), opt("user_name"), opt("reason")],
        default_subject: "Your access request for {{ product_name }} was rejected",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "user_registration_pending",
        description: "A new user registered and awaits approval.",
        recipient: Recipient::Admin,
        variables: &[req("user_name"), req("user_email"), opt("review_url")],
        default_subject: "New user registration from {{ user_name }} awaits approval",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "user_invited",
        description: "A user was invited to register.",
        recipient: Recipient::User,
        variables: &[req("invite_url"), opt("inviter_name")],
        default_subject: "You are invited to register",
        default_ttl_seconds: 7 * DAY,
    },
    Event {
        name: "user_activated",
        description: "A user's account was activated.",
        recipient: Recipient::User,
        variables: &[opt("user_name"), opt("login_url")],
        default_subject: "Your account is active",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "user_deactivated",
        description: "A user's account was deactivated.",
        recipient: Recipient::User,
        variables: &[opt("user_name")],
        default_subject: "Your account was deactivated",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "organization_registration_requested",
        description: "A new organisation asked to register.",
        recipient: Recipient::Admin,
        variables: &[
            req("organization_name"),
            req("user_email"),
            opt("user_name"),
            opt("review_url"),
        ],
        default_subject: "New organization registration request: {{ organization_name }}",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "organization_registration_approved",
        description: "An organisation's registration was approved.",
        recipient: Recipient::User,
        variables: &[req("organization_name")],
        default_subject: "Registration of {{ organization_name }} approved",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "organization_registration_rejected",
        description: "An organisation's registration was rejected.",
        recipient: Recipient::User,
        variables: &[req("organization_name"), opt("reason")],
        default_subject: "Registration of {{ organization_name }} rejected",
        default_ttl_seconds: 3 * DAY,
    },
    Event {
        name: "change_request_updated",
        description: "A change request the user follows changed status.",
        recipient: Recipient::User,
        variables: &[
            req("change_request_id"),
            req("title"),
            req("status"),
            opt("change_request_url"),
        ],
        default_subject: "Change request {{ change_request_id }} is now {{ status }}",
        default_ttl_seconds: 3 * DAY,
    },
];

pub fn find(name: &str) -> Option<&'static Event> {
    EVENTS.iter().find(|e| e.name == name)
}

impl Event {
    /// The event's own variables followed by the common ones.
    pub fn all_variables(&self) -> impl Iterator<Item = &'static Variable> {
        self.variables.iter().chain(COMMON_VARIABLES.iter())
    }

    pub fn has_variable(&self, name: &str) -> bool {
        self.all_variables().any(|v| v.name == name)
    }

    /// Every variable with its example value: what previews use without data.
    pub fn example_data(&self) -> serde_json::Map<String, serde_json::Value> {
        self.all_variables()
            .map(|v| {
                (
                    v.name.to_string(),
                    serde_json::Value::String(v.example.to_string()),
                )
            })
            .collect()
    }

    /// Every variable at the longest length a notification may give it (URLs stay URLs,
    /// addresses stay addresses): the worst case a template must stay within bounds for.
    pub fn longest_data(&self) -> serde_json::Map<String, serde_json::Value> {
        self.all_variables()
            .map(|v| {
                let value = if v.name.ends_with("_url") {
                    let url = format!("https://portal.example.com/{}/", v.name);
                    format!("{url}{}", "a".repeat(MAX_VALUE_CHARS - url.len()))
                } else if v.name.ends_with("_email") {
                    v.example.to_string()
                } else {
                    "W".repeat(MAX_VALUE_CHARS)
                };
                (v.name.to_string(), serde_json::Value::String(value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_the_portal_events_and_the_registry_event_once_each() {
        assert_eq!(EVENTS.len(), 12);
        let mut names: Vec<_> = EVENTS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 12);
        assert!(find("change_request_updated").is_some());
    }

    #[test]
    fn every_default_subject_uses_only_required_variables_of_its_event() {
        for event in EVENTS {
            let env = minijinja::Environment::new();
            let template = env.template_from_str(event.default_subject).unwrap();
            for var in template.undeclared_variables(false) {
                let v = event.all_variables().find(|v| v.name == var);
                assert!(v.is_some_and(|v| v.required), "{}: {var}", event.name);
            }
        }
    }
}
