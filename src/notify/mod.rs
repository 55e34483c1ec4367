//! Alert notifications: a transactional outbox and its delivery worker.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
}

impl WebhookConfig {
    /// `Err((option, message))` names the option of this webhook that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
