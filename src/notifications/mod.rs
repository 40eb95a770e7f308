//! Notifications: accepting them into the outbox, rendering, delivering and reporting.

pub mod accept;
pub mod batch;
pub mod http;
pub mod intake;
pub mod queue;
pub mod routing;
pub mod views;
