//! `[rules]`: thresholds per profile kind, GPS tolerance and custom CEL rules.

use std::cmp::Ordering::Less;

use serde::Deserialize;

use crate::domain::{Severity, VehicleKind};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// GPS error allowed at a fence before a position decides a violation.
    pub gps_tolerance_m: f64,
    /// Extra tolerance per unit of hdop above 1, when the fix carries hdop.
    pub hdop_tolerance_m: f64,
    /// The most the tolerance grows to however poor the fix: past it, a bad fix would excuse
    /// any parking place.
    pub max_gps_tolerance_m: f64,
    /// A fix with an hdop above this is no position at all: stored, never used for fences,
    /// tracks, rides or the latest position.
    pub max_hdop: f32,
    pub bike: Thresholds,
    pub bus: Thresholds,
    pub custom: Vec<CustomRuleConfig>,
    /// `telemetry_gap`: readings missing between consecutive `seq`.
    pub telemetry_gap: super::completeness::TelemetryGapConfig,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            gps_tolerance_m: 10.0,
            hdop_tolerance_m: 5.0,
            max_gps_tolerance_m: 15.0,
            max_hdop: 10.0,
            bike: Thresholds::bike(),
            bus: Thresholds::bus(),
            custom: Vec::new(),
            telemetry_gap: Default::default(),
        }
    }
}

/// Thresholds of the built-in rules for one kind of vehicle.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// `low_hydrogen` opens below this share of a full tank (or of the nominal range)...
    pub low_h2_warning_pct: f32,
    /// ...is critical below this one...
    pub low_h2_critical_pct: f32,
    /// ...and clears once refuelled above warning + this.
    pub low_h2_hysteresis_pct: f32,
    pub low_h2_hold_secs: u32,
    /// `overspeed` opens above the cap plus this, held for `overspeed_hold_secs`.
    pub overspeed_tolerance_kmh: f32,
    pub overspeed_hold_secs: u32,
    pub out_of_service_hold_secs: u32,
    pub offline_after_secs: u32,
    /// `h2_leak_suspected` opens when a vehicle at rest loses more than this.
    pub leak_tolerance_g: f32,
    pub leak_hold_secs: u32,
    /// At rest is locked, or still with the fuel cell delivering at most this (a vehicle
    /// without a lock, a bus, is at rest with its stack off).
    pub rest_max_fc_power_w: f32,
    /// Tank pressure band, bar. The top defaults to the maximum operating pressure of the
    /// profile's tank, 1.25 × its nominal working pressure (a full tank on a hot day).
    pub tank_pressure_min_bar: f32,
    pub tank_pressure_max_bar: Option<f32>,
    /// Tank temperature band, °C.
    pub tank_temp_min_c: f32,
    pub tank_temp_max_c: f32,
    pub tank_fault_hold_secs: u32,
    /// A fix implying more than this since the last good one is implausible.
    pub gps_max_speed_kmh: f32,
    /// Whether a ride must end in a parking area (shared bikes: yes; buses: no).
    pub parking_required: bool,
}

impl Thresholds {
    /// The Xiaoyi shared bike: 50 g of hydrogen in metal hydride at low pressure, 23 km/h cap.
    pub fn bike() -> Self {
        Self {
            low_h2_warning_pct: 20.0,
            low_h2_critical_pct: 10.0,
            low_h2_hysteresis_pct: 5.0,
            low_h2_hold_secs: 60,
            overspeed_tolerance_kmh: 2.0,
            overspeed_hold_secs: 10,
            out_of_service_hold_secs: 60,
            // Parked bikes report sparsely; ten minutes of silence is worth a look.
            offline_after_secs: 600,
            leak_tolerance_g: 2.0,
            leak_hold_secs: 120,
            rest_max_fc_power_w: 5.0,
            tank_pressure_min_bar: 0.0,
            tank_pressure_max_bar: None,
            tank_temp_min_c: -30.0,
            tank_temp_max_c: 65.0,
            tank_fault_hold_secs: 10,
            gps_max_speed_kmh: 60.0,
            parking_required: true,
        }
    }

    /// A fuel-cell coach with 35 MPa type III/IV tanks (assumed, to be configured).
    pub fn bus() -> Self {
        Self {
            low_h2_warning_pct: 20.0,
            low_h2_critical_pct: 10.0,
            low_h2_hysteresis_pct: 5.0,
            low_h2_hold_secs: 60,
            overspeed_tolerance_kmh: 5.0,
            overspeed_hold_secs: 10,
            out_of_service_hold_secs: 120,
            offline_after_secs: 300,
            leak_tolerance_g: 200.0,
            leak_hold_secs: 300,
            // A running stack idles at kilowatts (air compressor, heating); parked, it is off.
            rest_max_fc_power_w: 100.0,
            tank_pressure_min_bar: 0.0,
            tank_pressure_max_bar: None,
            tank_temp_min_c: -40.0,
            tank_temp_max_c: 85.0,
            tank_fault_hold_secs: 10,
            gps_max_speed_kmh: 160.0,
            parking_required: false,
        }
    }
}

impl Thresholds {
    /// The top of the pressure band for a tank of this nominal working pressure: the one set,
    /// else the maximum operating pressure of the standards (GTR 13, SAE J2579), 1.25 × the
    /// nominal pressure, which a full tank reaches at about 85 °C.
    pub fn pressure_top_bar(&self, nominal_bar: f32) -> f32 {
        self.tank_pressure_max_bar.unwrap_or(1.25 * nominal_bar)
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::bike()
    }
}

/// `[[rules.custom]]`: an expression in CEL over `reading`, `vehicle` and `zone`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomRuleConfig {
    pub name: String,
    /// Opens (after `hold_secs`) while this is true.
    pub when: String,
    /// Clears when this is true; when absent, as soon as `when` is false.
    #[serde(default)]
    pub clear_when: Option<String>,
    #[serde(default)]
    pub hold_secs: u32,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Kinds of vehicle it applies to; all when empty.
    #[serde(default)]
    pub kinds: Vec<VehicleKind>,
}

fn default_severity() -> Severity {
    Severity::Warning
}

impl RulesConfig {
    pub fn thresholds(&self, kind: VehicleKind) -> &Thresholds {
        match kind {
            VehicleKind::Bike => &self.bike,
            VehicleKind::Bus => &self.bus,
        }
    }

    /// `Err((option, message))` names the option below `rules.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |o: String, m: &str| Err((o, m.to_owned()));
        for (name, v) in [
            ("gps_tolerance_m", self.gps_tolerance_m),
            ("hdop_tolerance_m", self.hdop_tolerance_m),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return err(name.into(), "must be a number ≥ 0");
            }
        }
        if !(self.max_gps_tolerance_m.is_finite()
            && self.max_gps_tolerance_m >= self.gps_tolerance_m)
        {
            return err(
                "max_gps_tolerance_m".into(),
                "must be a number ≥ gps_tolerance_m",
            );
        }
        if !(self.max_hdop.is_finite() && self.max_hdop >= 1.0) {
            return err("max_hdop".into(), "must be a number ≥ 1");
        }
        for kind in VehicleKind::ALL {
            let t = self.thresholds(kind);
            let k = kind.as_str();
            if !(t.low_h2_critical_pct >= 0.0
                && t.low_h2_critical_pct <= t.low_h2_warning_pct
                && t.low_h2_warning_pct + t.low_h2_hysteresis_pct <= 100.0
                && t.low_h2_hysteresis_pct >= 0.0)
            {
                return err(
                    format!("{k}.low_h2_warning_pct"),
                    "needs 0 ≤ critical ≤ warning and warning + hysteresis ≤ 100",
                );
            }
            for (name, v) in [
                ("overspeed_tolerance_kmh", t.overspeed_tolerance_kmh),
                ("leak_tolerance_g", t.leak_tolerance_g),
                ("rest_max_fc_power_w", t.rest_max_fc_power_w),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return err(format!("{k}.{name}"), "must be a number ≥ 0");
                }
            }
            if !(t.gps_max_speed_kmh.is_finite() && t.gps_max_speed_kmh > 0.0) {
                return err(
                    format!("{k}.gps_max_speed_kmh"),
                    "must be a positive number",
                );
            }
            if let Some(max) = t.tank_pressure_max_bar
                && t.tank_pressure_min_bar.partial_cmp(&max) != Some(Less)
            {
                return err(
                    format!("{k}.tank_pressure_max_bar"),
                    "must be above the minimum",
                );
            }
            if t.tank_temp_min_c.partial_cmp(&t.tank_temp_max_c) != Some(Less) {
                return err(format!("{k}.tank_temp_max_c"), "must be above the minimum");
            }
            if t.offline_after_secs == 0 {
                return err(format!("{k}.offline_after_secs"), "must be at least 1");
            }
        }
        self.telemetry_gap.validate()?;
        let mut names = std::collections::HashSet::new();
        for (n, c) in self.custom.iter().enumerate() {
            let at = |field: &str| format!("custom[{n}].{field}");
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return err(at("name"), "must be a non-empty snake_case name");
            }
            if super::builtin::NAMES.contains(&c.name.as_str())
                || c.name == super::completeness::TELEMETRY_GAP
            {
                return err(at("name"), "is the name of a built-in rule");
            }
            if !names.insert(c.name.as_str()) {
                return err(at("name"), "is used by an earlier custom rule");
            }
            super::custom::compile(&c.when).map_err(|m| (at("when"), m))?;
            if let Some(clear) = &c.clear_when {
                super::custom::compile(clear).map_err(|m| (at("clear_when"), m))?;
            }
        }
        Ok(())
    }
}
