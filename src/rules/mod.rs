//! The rules engine: readings and per-vehicle state in, alert transitions out.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {}

impl RulesConfig {
    /// `Err((option, message))` names the option below `rules.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
