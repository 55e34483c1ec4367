//! What the rules remember about one vehicle between batches. Stored as jsonb in
//! `vehicles.rule_state` and read under the vehicle's row lock, so that any ingest instance
//! can process any vehicle (docs/delivery.md). Kept small: a few slots and trackers, no history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::Severity;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VehicleRuleState {
    /// Newest measurement time the alert rules have acted on. Anything older is a backlog:
    /// it may feed rides and consumption, never an alert decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<DateTime<Utc>>,
    /// When a message from the vehicle last arrived (arrival time, for `offline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<DateTime<Utc>>,
    /// Last fix considered plausible: geofences use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// A fix that looked implausible from `fix`: if the next one agrees with it, `fix` was
    /// the outlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<Fix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_g: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ride: Option<RideTrack>,
    /// Since when the vehicle has been at rest (see `builtin::at_rest`), and the hydrogen it held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest: Option<Rest>,
    /// Decayed sums of kilometres and grams between recent refuels: the learned consumption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumption: Option<Consumption>,
    /// The stretch since the last refuel, which the next refuel turns into a sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg: Option<Leg>,
    /// One slot per `(rule, zone)` that is open or counting towards its hold time, keyed
    /// `rule` or `rule@zone`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub alerts: BTreeMap<String, Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub ts: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdop: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RideTrack {
    pub started_at: DateTime<Utc>,
    pub start_lat: f64,
    pub start_lon: f64,
    pub start_h2_g: Option<f32>,
    pub start_odo_km: Option<f64>,
    /// Distance along plausible fixes so far, for vehicles without an odometer.
    pub gps_km: f64,
    /// Hydrogen added during the ride (a bus refuelled mid-service), so that use stays right.
    #[serde(default)]
    pub refuelled_g: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_odo_km: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rest {
    pub since: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    /// The most hydrogen seen while at rest: a drop is measured from here.
    pub h2_ref_g: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Consumption {
    pub km: f64,
    pub g: f64,
}

/// Since the last refuel: how full the tank was, how low it has gone and how far the vehicle
/// went, for every kind of vehicle (a bus has no rides to learn from).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    /// The most hydrogen seen before the vehicle moved off: a refuel spans several readings.
    pub full_g: f32,
    /// The least seen since: the leg used `full_g - low_g`.
    pub low_g: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_odo_km: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_odo_km: Option<f64>,
    /// Distance along plausible fixes while moving, for vehicles without an odometer.
    pub gps_km: f64,
    /// Whether it has moved since the refuel.
    pub moving: bool,
}

/// The rules' view of one `(rule, zone)`: whether its alert is open and at which severity,
/// and since when each severity's condition has held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Slot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<Severity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub since: BTreeMap<Severity, DateTime<Utc>>,
    /// Since when the clear condition has held (custom rules with a clear hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clear_since: Option<DateTime<Utc>>,
}

impl Slot {
    pub fn is_idle(&self) -> bool {
        self.open.is_none() && self.since.is_empty() && self.clear_since.is_none()
    }
}

pub(crate) fn slot_key(rule: &str, zone: Option<&str>) -> String {
    match zone {
        Some(z) => format!("{rule}@{z}"),
        None => rule.to_owned(),
    }
}

pub(crate) fn split_key(key: &str) -> (&str, Option<&str>) {
    match key.split_once('@') {
        Some((r, z)) => (r, Some(z)),
        None => (key, None),
    }
}

impl VehicleRuleState {
    /// The learned km per gram, once there is enough distance to trust it.
    pub fn learned_km_per_g(&self) -> Option<f32> {
        let c = self.consumption?;
        (c.km >= super::ride::MIN_LEARNED_KM && c.g > 0.0).then(|| (c.km / c.g) as f32)
    }

    /// An operator resolved this alert: forget it, so that the condition (if it still holds
    /// or comes back) makes a new incident after its hold time.
    pub fn forget(&mut self, rule: &str, zone: Option<&str>) {
        self.alerts.remove(&slot_key(rule, zone));
        if rule == super::builtin::H2_LEAK_SUSPECTED {
            // The operator judged the drop so far harmless: measure from here on.
            self.rest = None;
        }
    }

    /// The severity of the vehicle-wide alert of `rule` that the rules believe open.
    pub fn open_severity(&self, rule: &str) -> Option<Severity> {
        self.alerts.get(rule).and_then(|s| s.open)
    }

    /// Whether the rules believe an alert of `rule` (any zone) is open.
    pub fn is_open(&self, rule: &str) -> bool {
        self.alerts
            .iter()
            .any(|(k, s)| split_key(k).0 == rule && s.open.is_some())
    }
}
