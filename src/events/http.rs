//! `GET /events`: the catalogue as the API describes it.

use actix_web::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Event, Recipient, Variable, EVENTS};

/// An event as the API describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventInfo {
    #[schema(example = "access_request_approved")]
    pub event: &'static str,
    pub description: &'static str,
    pub recipient: Recipient,
    /// Every variable the event accepts, including `portal_name` and `portal_url`.
    pub variables: Vec<Variable>,
    pub default_subject: &'static str,
    pub default_ttl_seconds: i64,
}

impl From<&'static Event> for EventInfo {
    fn from(e: &'static Event) -> Self {
        Self {
            event: e.name,
            description: e.description,
            recipient: e.recipient,
            variables: e.all_variables().copied().collect(),
            default_subject: e.default_subject,
            default_ttl_seconds: e.default_ttl_seconds,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventCatalogue {
    pub events: Vec<EventInfo>,
}

/// The event catalogue: names, recipients, variables, default subjects and lifetimes.
#[utoipa::path(
    tag = "events",
    responses((status = 200, description = "The event catalogue", body = EventCatalogue))
)]
#[get("/events")]
pub async fn list_events() -> actix_web::web::Json<EventCatalogue> {
    actix_web::web::Json(EventCatalogue {
        events: EVENTS.iter().map(EventInfo::from).collect(),
    })
}
