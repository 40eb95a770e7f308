//! HTTP-level tests against the real application: port 0, its own SQLite file (or PostgreSQL
//! database when MAILROOM_TEST_POSTGRES_URL is set).

mod child;
mod helpers;
mod smtp_server;

mod admin_email;
mod auth;
mod cli;
mod console;
mod delivery_faults;
mod durability;
mod errors;
mod jwks;
mod notifications;
mod oauth;
mod openapi;
mod operations;
mod pipelining;
mod security_review;
mod settings_smtp;
mod smtp_test;
mod subjects;
mod template_attacks;
mod templates;
