//! Rides from lock transitions and ride events, and the decayed sums that consumption is
//! learned in (the samples come from the legs between refuels, see `consumption`).

use chrono::{DateTime, Utc};

use super::state::{Consumption, RideTrack, VehicleRuleState};

/// Below this many kilometres of recent driving the learned ratio is not trusted.
pub const MIN_LEARNED_KM: f64 = 5.0;

/// Samples shorter than this teach nothing: hydrogen readings are too coarse for them.
const MIN_SAMPLE_KM: f64 = 0.5;

/// Fixes closer than this to the previous one are GPS wander, not riding.
const MIN_STEP_M: f64 = 3.0;

pub(crate) fn start(
    state: &mut VehicleRuleState,
    ts: DateTime<Utc>,
    pos: Option<(f64, f64)>,
    odo_km: Option<f64>,
) {
    let (lat, lon) = pos.unwrap_or((f64::NAN, f64::NAN));
    state.ride = Some(RideTrack {
        started_at: ts,
        start_lat: lat,
        start_lon: lon,
        start_h2_g: state.h2_g,
        start_odo_km: odo_km,
        gps_km: 0.0,
        refuelled_g: 0.0,
        last_odo_km: odo_km,
    });
}

/// Extend the ride with a plausible step `from` → `to` (metres).
pub(crate) fn advance(ride: &mut RideTrack, step_m: f64, odo_km: Option<f64>) {
    if step_m >= MIN_STEP_M {
        ride.gps_km += step_m / 1000.0;
    }
    if odo_km.is_some() {
        if ride.start_odo_km.is_none() {
            ride.start_odo_km = odo_km;
        }
        ride.last_odo_km = odo_km;
    }
}

/// Distance of a finished ride: the odometer when it moved sensibly, else the GPS track.
pub(crate) fn distance_km(ride: &RideTrack) -> f64 {
    match (ride.start_odo_km, ride.last_odo_km) {
        (Some(a), Some(b)) if b >= a && b - a < 2_000.0 => b - a,
        _ => ride.gps_km,
    }
}

/// Hydrogen used over a ride, refuels during it accounted for.
pub(crate) fn h2_used_g(ride: &RideTrack, end_h2_g: Option<f32>) -> f32 {
    match (ride.start_h2_g, end_h2_g) {
        (Some(a), Some(b)) => (a + ride.refuelled_g - b).max(0.0),
        _ => 0.0,
    }
}

/// Fold one sample (a leg between refuels) into the decayed consumption sums. `window_km` is
/// how much recent driving the learned figure reflects; samples far from `nominal_km_per_g`
/// are sensor faults or refuels not seen, and are ignored.
pub(crate) fn learn(
    state: &mut VehicleRuleState,
    km: f64,
    used_g: f32,
    nominal_km_per_g: f32,
    window_km: f64,
) {
    if km < MIN_SAMPLE_KM || used_g <= 0.0 {
        return;
    }
    let ratio = km / used_g as f64;
    let nominal = nominal_km_per_g as f64;
    if !(nominal / 4.0..=nominal * 4.0).contains(&ratio) {
        return;
    }
    let decay = (-km / window_km).exp();
    let c = state.consumption.unwrap_or(Consumption { km: 0.0, g: 0.0 });
    state.consumption = Some(Consumption {
        km: c.km * decay + km,
        g: c.g * decay + used_g as f64,
    });
}
