//! The built-in rules of docs/alerts.md, each a function from what is known to a [`Verdict`].
//! The engine turns verdicts into alert transitions with hold times and hysteresis.

use serde_json::{Value, json};

use super::config::Thresholds;
use super::engine::{GeoFix, VehicleInfo};
use super::state::{Fix, Rest, VehicleRuleState};
use crate::domain::{Profile, Profiles};
use crate::domain::{Reading, Severity, VehicleKind};
use crate::geo::{Zone, ZoneHit, ZoneIndex, ZoneKind, at_margin_m, distance_m};

pub const LOW_HYDROGEN: &str = "low_hydrogen";
pub const PARKING_VIOLATION: &str = "parking_violation";
pub const OUT_OF_SERVICE_AREA: &str = "out_of_service_area";
pub const OVERSPEED: &str = "overspeed";
pub const OFFLINE: &str = "offline";
pub const H2_LEAK_SUSPECTED: &str = "h2_leak_suspected";
pub const TANK_FAULT: &str = "tank_fault";
pub const GPS_IMPLAUSIBLE: &str = "gps_implausible";

pub const NAMES: [&str; 8] = [
    LOW_HYDROGEN,
    PARKING_VIOLATION,
    OUT_OF_SERVICE_AREA,
    OVERSPEED,
    OFFLINE,
    H2_LEAK_SUSPECTED,
    TANK_FAULT,
    GPS_IMPLAUSIBLE,
];

/// What one observation says about one rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The condition holds at this severity.
    Active(Severity, Value),
    /// The clear condition holds.
    Clear,
    /// Between the two (the hysteresis band): an open alert stays open, a pending one
    /// starts its hold time again.
    Keep,
    /// Nothing to say (a field missing, no zones of the kind, an expression that failed).
    Unknown,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) struct GpsCheck {
    pub plausible: bool,
    /// Metres from the previous plausible fix (for ride distance), when plausible.
    pub step_m: f64,
    pub verdict: Verdict,
}

impl GpsCheck {
    /// A reading without a usable fix: no judgement of plausibility either way.
    pub const NO_FIX: GpsCheck = GpsCheck {
        plausible: false,
        step_m: 0.0,
        verdict: Verdict::Unknown,
    };
}

/// Whether going from `a` to `b` is possible, allowing each fix its tolerance.
fn possible(a: &Fix, b: &Fix, tol_m: f64, max_kmh: f32) -> (bool, f64, f64) {
    let d = distance_m(a.lat, a.lon, b.lat, b.lon);
    let excess = (d - 2.0 * tol_m).max(0.0);
    let dt = (b.ts - a.ts).num_milliseconds() as f64 / 1000.0;
    let kmh = if dt > 0.0 {
        excess / dt * 3.6
    } else if excess > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (kmh <= max_kmh as f64, d, kmh)
}

/// `gps_implausible`, and which fix geofences may use. A fix that implies an impossible
/// speed from the last good one is kept out of geofences; if the next fix agrees with it
/// rather than with the last good one, the last good one was the outlier.
pub(crate) fn gps_check(
    state: &mut VehicleRuleState,
    r: &Reading,
    tol_m: f64,
    t: &Thresholds,
) -> GpsCheck {
    let fix = Fix {
        ts: r.ts,
        lat: r.lat,
        lon: r.lon,
        hdop: r.hdop,
    };
    let Some(last) = state.fix else {
        state.fix = Some(fix);
        return GpsCheck {
            plausible: true,
            step_m: 0.0,
            verdict: Verdict::Clear,
        };
    };
    let (ok, d, kmh) = possible(&last, &fix, tol_m, t.gps_max_speed_kmh);
    let agrees_with_suspect = state
        .suspect
        .is_some_and(|s| possible(&s, &fix, tol_m, t.gps_max_speed_kmh).0);
    if ok || agrees_with_suspect {
        state.fix = Some(fix);
        state.suspect = None;
        return GpsCheck {
            plausible: true,
            step_m: if ok { d } else { 0.0 },
            verdict: Verdict::Clear,
        };
    }
    state.suspect = Some(fix);
    GpsCheck {
        plausible: false,
        step_m: 0.0,
        verdict: Verdict::Active(
            Severity::Warning,
            json!({
                "jump_m": round1(d),
                "implied_speed_kmh": if kmh.is_finite() { round1(kmh) } else { -1.0 },
                "max_plausible_kmh": t.gps_max_speed_kmh,
                "last_good_fix": {"lat": last.lat, "lon": last.lon, "ts": last.ts},
            }),
        ),
    }
}

/// How much hydrogen a vehicle has left, as `low_hydrogen` and the refuel plan measure it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H2Level {
    /// Share of the tank, percent.
    pub pct: f32,
    /// Predicted range with the consumption in use, km.
    pub range_km: f32,
    /// That range as a share of the nominal range of a full tank, percent.
    pub range_pct: f32,
    /// The lower of the two shares: what the thresholds are compared with.
    pub level: f32,
}

/// The level of `h2_g` in a `tank_g` tank for a vehicle doing `km_per_g`, against a profile
/// whose nominal ratio is `nominal_km_per_g`.
pub fn hydrogen_level(h2_g: f32, tank_g: f32, km_per_g: f32, nominal_km_per_g: f32) -> H2Level {
    let pct = h2_g / tank_g * 100.0;
    let range_km = h2_g * km_per_g;
    let range_pct = range_km / (tank_g * nominal_km_per_g) * 100.0;
    H2Level {
        pct,
        range_km,
        range_pct,
        level: pct.min(range_pct),
    }
}

/// `low_hydrogen`: the lower of the tank share and the predicted share of nominal range.
/// `open` is the severity of the alert in progress: a critical alert goes back to warning
/// only above critical + hysteresis, so that a level wobbling at the threshold (or a refuel
/// of a few grams) does not flip it back and forth.
pub(crate) fn low_h2(
    h2_g: f32,
    km_per_g: f32,
    info: &VehicleInfo,
    profiles: &Profiles,
    t: &Thresholds,
    open: Option<Severity>,
) -> Verdict {
    let profile = profiles.get(info.kind);
    let tank = if info.tank_g > 0.0 {
        info.tank_g
    } else {
        profile.tank_g
    };
    let l = hydrogen_level(h2_g, tank, km_per_g, profile.km_per_g());
    let details = || {
        json!({
            "h2_g": round1(h2_g as f64),
            "h2_pct": round1(l.pct as f64),
            "range_km": round1(l.range_km as f64),
            "km_per_g": (km_per_g as f64 * 1000.0).round() / 1000.0,
            "warning_pct": t.low_h2_warning_pct,
            "critical_pct": t.low_h2_critical_pct,
        })
    };
    let critical_until = if open == Some(Severity::Critical) {
        t.low_h2_critical_pct + t.low_h2_hysteresis_pct
    } else {
        t.low_h2_critical_pct
    };
    if l.level < critical_until.min(t.low_h2_warning_pct) {
        Verdict::Active(Severity::Critical, details())
    } else if l.level < t.low_h2_warning_pct {
        Verdict::Active(Severity::Warning, details())
    } else if l.level >= t.low_h2_warning_pct + t.low_h2_hysteresis_pct {
        Verdict::Clear
    } else {
        Verdict::Keep
    }
}

/// The slow zone for this kind of vehicle with the lowest cap that the fix is surely inside,
/// of the zones `around` it.
pub(crate) fn slow_zone<'z>(
    around: &[ZoneHit<'z>],
    g: GeoFix,
    kind: VehicleKind,
) -> Option<&'z Zone> {
    around
        .iter()
        .filter(|h| h.zone.kind == ZoneKind::Slow && h.zone.applies_to(kind))
        .filter(|h| h.signed_m <= -g.tol_m)
        .map(|h| h.zone)
        .min_by(|a, b| {
            a.max_speed_kmh
                .unwrap_or(f32::MAX)
                .total_cmp(&b.max_speed_kmh.unwrap_or(f32::MAX))
        })
}

/// `overspeed`: above the cap plus tolerance opens, at or below the cap clears.
pub(crate) fn overspeed(
    speed: f32,
    profile: &Profile,
    slow: Option<&Zone>,
    t: &Thresholds,
) -> Verdict {
    let zone_cap = slow.and_then(|z| z.max_speed_kmh);
    let cap = zone_cap.map_or(profile.speed_cap_kmh, |c| c.min(profile.speed_cap_kmh));
    if speed > cap + t.overspeed_tolerance_kmh {
        Verdict::Active(
            Severity::Warning,
            json!({
                "speed_kmh": round1(speed as f64),
                "cap_kmh": cap,
                "slow_zone": slow.filter(|_| zone_cap.is_some_and(|c| c < profile.speed_cap_kmh)).map(|z| z.id.clone()),
            }),
        )
    } else if speed <= cap {
        Verdict::Clear
    } else {
        Verdict::Keep
    }
}

/// `out_of_service_area`: beyond the tolerance outside every service area of the vehicle's
/// kind opens; inside one clears. Without such service areas, or without a trustworthy fix,
/// it says nothing. `around`: the zones within the tolerance of the fix.
pub(crate) fn service_area(
    zones: &ZoneIndex,
    g: Option<GeoFix>,
    around: &[ZoneHit<'_>],
    kind: VehicleKind,
) -> Verdict {
    let Some(g) = g.filter(|_| zones.has_service_area_for(kind)) else {
        return Verdict::Unknown;
    };
    let best = around
        .iter()
        .filter(|h| h.zone.kind == ZoneKind::ServiceArea && h.zone.applies_to(kind))
        .map(|h| h.signed_m)
        .reduce(f64::min);
    match best {
        Some(d) if d <= 0.0 => Verdict::Clear,
        Some(_) => Verdict::Keep,
        None => Verdict::Active(Severity::Warning, json!({"tolerance_m": round1(g.tol_m)})),
    }
}

/// `tank_fault`: pressure or temperature out of band (critical), or fault codes (warning).
/// The band tops out at `max_bar` (see [`Thresholds::pressure_top_bar`]).
pub(crate) fn tank_fault(r: &Reading, t: &Thresholds, max_bar: f32) -> Verdict {
    let pressure_bad = r
        .h2_pressure_bar
        .is_some_and(|p| !(t.tank_pressure_min_bar..=max_bar).contains(&p));
    let temp_bad = r
        .tank_temp_c
        .is_some_and(|c| !(t.tank_temp_min_c..=t.tank_temp_max_c).contains(&c));
    if !pressure_bad && !temp_bad && r.faults.is_empty() {
        return Verdict::Clear;
    }
    let severity = if pressure_bad || temp_bad {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Verdict::Active(
        severity,
        json!({
            "h2_pressure_bar": r.h2_pressure_bar,
            "tank_temp_c": r.tank_temp_c,
            "pressure_band_bar": [t.tank_pressure_min_bar, max_bar],
            "temp_band_c": [t.tank_temp_min_c, t.tank_temp_max_c],
            "faults": r.faults,
        }),
    )
}

/// `h2_leak_suspected`: hydrogen falling while the vehicle is at rest. Measured from the most
/// seen since it came to rest; only a refuel (or an operator) clears it.
pub(crate) fn leak(
    state: &mut VehicleRuleState,
    r: &Reading,
    refuelled: bool,
    tol_m: f64,
    t: &Thresholds,
) -> Verdict {
    if refuelled {
        state.rest = None;
        return Verdict::Clear;
    }
    let at_rest = at_rest(r, t);
    if !at_rest {
        state.rest = None;
        return Verdict::Keep;
    }
    let moved = state
        .rest
        .is_some_and(|s| distance_m(s.lat, s.lon, r.lat, r.lon) > (2.0 * tol_m).max(30.0));
    if moved {
        state.rest = None;
    }
    let rest = state.rest.get_or_insert(Rest {
        since: r.ts,
        lat: r.lat,
        lon: r.lon,
        h2_ref_g: r.h2_g,
    });
    rest.h2_ref_g = rest.h2_ref_g.max(r.h2_g);
    let drop = rest.h2_ref_g - r.h2_g;
    if drop > t.leak_tolerance_g {
        Verdict::Active(
            Severity::Critical,
            json!({
                "drop_g": round1(drop as f64),
                "at_rest_since": rest.since,
                "tolerance_g": t.leak_tolerance_g,
            }),
        )
    } else {
        Verdict::Keep
    }
}

/// At rest: still, and either locked or with the fuel cell off (what a vehicle without a lock,
/// a bus, shows when parked). A running stack uses hydrogen, so a still vehicle with its
/// stack on tells nothing about a leak; with the stack off, hydrogen has no way out but one.
pub(crate) fn at_rest(r: &Reading, t: &Thresholds) -> bool {
    let still = r.speed_kmh < 1.0;
    let stack_off = r.fc_power_w.is_some_and(|w| w <= t.rest_max_fc_power_w);
    still && (r.locked == Some(true) || stack_off)
}

/// Where a ride ended with respect to parking areas.
#[derive(Debug, Clone)]
pub(crate) struct ParkingCheck {
    /// The parking area it ended in (within tolerance), and the signed distance.
    pub parking: Option<(String, f64)>,
    /// The no-parking zone it ended at: id, name and signed distance.
    pub no_parking: Option<(String, String, f64)>,
    pub nearest: Option<(String, String, f64)>,
    pub tol_m: f64,
}

impl ParkingCheck {
    pub fn allowed(&self) -> bool {
        self.parking.is_some() && self.no_parking.is_none()
    }

    pub fn details(&self) -> Value {
        json!({
            "nearest_zone": self.nearest.as_ref().map(|n| &n.0),
            "nearest_zone_name": self.nearest.as_ref().map(|n| &n.1),
            "distance_m": self.nearest.as_ref().map(|n| round1(n.2)),
            "no_parking_zone": self.no_parking.as_ref().map(|n| &n.0),
            "no_parking_zone_name": self.no_parking.as_ref().map(|n| &n.1),
            "tolerance_m": round1(self.tol_m),
        })
    }
}

/// Where a ride of a vehicle of `kind` ended. The GPS tolerance means opposite things per zone
/// kind: within it of a parking area is inside (the rider gets the benefit of a doubtful fix),
/// while a fix at a no-parking zone (inside it, or within a margin of half its width and at
/// most half the tolerance) is a violation however narrow the zone: a fire lane is never
/// wider than GPS error, so "surely inside" would never enforce one.
pub(crate) fn parking(zones: &ZoneIndex, g: GeoFix, kind: VehicleKind) -> ParkingCheck {
    let hits: Vec<_> = zones
        .near(g.lat, g.lon, g.tol_m)
        .into_iter()
        .filter(|h| h.zone.applies_to(kind))
        .collect();
    let parking = hits
        .iter()
        .find(|h| h.zone.kind == ZoneKind::Parking)
        .map(|h| (h.zone.id.clone(), h.signed_m));
    let no_parking = hits
        .iter()
        .find(|h| {
            h.zone.kind == ZoneKind::NoParking && h.signed_m <= at_margin_m(h.zone.width_m, g.tol_m)
        })
        .map(|h| (h.zone.id.clone(), h.zone.name.clone(), h.signed_m));
    let nearest = zones
        .nearest_parking_for(kind, g.lat, g.lon)
        .map(|(z, d)| (z.id.clone(), z.name.clone(), d));
    ParkingCheck {
        parking,
        no_parking,
        nearest,
        tol_m: g.tol_m,
    }
}
