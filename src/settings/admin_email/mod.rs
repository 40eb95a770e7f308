//! Where notifications for administrators go.

pub mod http;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::db::StoreError;
use crate::store::settings as store;
use crate::validation::Field;

pub const KEY: &str = "admin_email";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminEmail {
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AdminEmailInput {
    /// The address that receives admin notifications (access requests, registrations).
    /// `null` removes it; admin notifications are then held until one is set.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Email, example = "admins@example.com", required = true)]
    pub email: Field<String>,
}

/// The admin address, if one is set.
pub fn load(conn: &mut DbConnection) -> Result<Option<String>, StoreError> {
    Ok(store::load::<Option<AdminEmail>>(conn, KEY)?
        .and_then(|s| s.value)
        .map(|a| a.email))
}
