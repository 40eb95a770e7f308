//! mailroom: an email-notification service with a REST/JSON API.

pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod delivery;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod mail;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod outbound;
pub mod rate_limit;
pub mod routes;
pub mod sandbox;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod suppressions;
pub mod telemetry;
pub mod validation;
pub mod webhooks;
