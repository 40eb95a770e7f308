//! The tables, one file per concern, over [`crate::db`]'s connections. Every function returns
//! [`crate::db::StoreError`] (or diesel's error); none knows of HTTP.

pub mod notifications;
pub mod queue;
pub mod settings;
pub mod stats;
pub mod suppressions;
pub mod webhooks;
