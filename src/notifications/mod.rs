//! Notifications: accepting them into the outbox, rendering, delivering and reporting.

pub mod accept;
pub mod http;
pub mod intake;
pub mod routing;
