//! The rules engine: readings, events and per-vehicle state in; alert transitions and rides
//! out (docs/alerts.md).
//!
//! [`Engine`] is pure: it reads a [`VehicleRuleState`] and a message and returns
//! [`Output`]s, touching nothing else, so every rule is tested without a database. The state
//! lives in `vehicles.rule_state`; ingest's unit of work (`ingest::commit`) loads it, runs the
//! engine and saves it inside the batch's transaction, under the vehicle's row lock: any
//! instance may process any vehicle. Nothing here does I/O.

mod builtin;
pub mod completeness;
mod config;
mod consumption;
mod custom;
mod engine;
mod ride;
mod state;

pub use builtin::NAMES as BUILTIN_RULES;
pub use builtin::{H2Level, hydrogen_level};
pub use config::{CustomRuleConfig, RulesConfig, Thresholds};
pub use engine::{AlertAction, AlertChange, Engine, EngineError, Output, Ride, VehicleInfo};
pub use state::{Slot, VehicleRuleState};

use std::sync::{Arc, RwLock};

/// The engine the service runs now: the API and the zone reload swap in one over new zones,
/// each batch takes the one current when it starts.
pub struct SharedEngine(RwLock<Arc<Engine>>);

impl SharedEngine {
    pub fn new(engine: Engine) -> Self {
        SharedEngine(RwLock::new(Arc::new(engine)))
    }

    pub fn current(&self) -> Arc<Engine> {
        self.0.read().expect("engine lock").clone()
    }

    /// Run the rules over `zones` from now on (after zones change through the API or an
    /// import).
    pub fn set_zones(&self, zones: Arc<crate::geo::ZoneIndex>) {
        let mut e = self.0.write().expect("engine lock");
        *e = Arc::new(e.with_zones(zones));
    }
}

/// A rule state as stored; one this version cannot read starts afresh rather than stop
/// ingest: the cost is at most one hold time of delay on open alerts.
pub fn parse_rule_state(vehicle: impl std::fmt::Display, raw: &str) -> VehicleRuleState {
    serde_json::from_str(raw).unwrap_or_else(|e| {
        tracing::warn!(%vehicle, error = %e, "unreadable rule state, starting afresh");
        VehicleRuleState::default()
    })
}

#[cfg(test)]
mod tests;

/// A stored rule state with the incident of `(rule, zone)` forgotten, as an operator's resolve
/// asks: a condition that still holds (or comes back) is a new incident after its hold time.
pub fn forget(
    vehicle: &str,
    stored: &str,
    rule: &str,
    zone: Option<&str>,
) -> serde_json::Result<String> {
    let mut state = parse_rule_state(vehicle, stored);
    state.forget(rule, zone);
    serde_json::to_string(&state)
}
