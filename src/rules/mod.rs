//! The rules engine: readings, events and per-vehicle state in; alert transitions and rides
//! out (docs/alerts.md).
//!
//! [`Engine`] is pure: it reads a [`VehicleRuleState`] and a message and returns
//! [`Output`]s, touching nothing else, so every rule is tested without a database. The state
//! lives in `vehicles.rule_state` and [`store`] loads, runs and saves it inside the ingest
//! transaction, under the vehicle's row lock: any instance may process any vehicle.

mod builtin;
pub mod completeness;
mod config;
mod consumption;
mod custom;
mod engine;
mod ride;
mod state;
pub mod store;

pub use builtin::NAMES as BUILTIN_RULES;
pub use builtin::{H2Level, hydrogen_level};
pub use config::{CustomRuleConfig, RulesConfig, Thresholds};
pub use engine::{AlertAction, AlertChange, Engine, EngineError, Output, Ride, VehicleInfo};
pub use state::{Slot, VehicleRuleState};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod store_tests;
