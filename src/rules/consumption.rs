//! Consumption learned between refuels, for every kind of vehicle: the distance covered (the
//! odometer, else the plausible fixes while moving) against the hydrogen used from one refuel
//! to the next. Rides would do for bikes, but a bus has no lock and no rides.

use super::ride;
use super::state::{Leg, VehicleRuleState};
use crate::domain::Reading;

/// Below this speed a vehicle is still: GPS wander of a parked vehicle is not distance.
const STILL_KMH: f32 = 1.0;

/// Fixes closer than this to the previous one are GPS wander, not driving.
const MIN_STEP_M: f64 = 3.0;

/// An odometer that moved more than this over one leg is wrong (reset, replaced).
const MAX_ODO_LEG_KM: f64 = 5_000.0;

/// How to judge a sample: the vehicle's expected ratio (samples far from it are sensor faults
/// or a refuel not seen) and how much recent distance the learned figure reflects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Learning {
    pub expected_km_per_g: f32,
    pub window_km: f64,
    /// A rise of hydrogen by more than this is a refuel.
    pub refuel_min_g: f32,
}

fn leg_at(h2_g: f32, odo_km: Option<f64>) -> Leg {
    Leg {
        full_g: h2_g,
        low_g: h2_g,
        start_odo_km: odo_km,
        last_odo_km: odo_km,
        gps_km: 0.0,
        moving: false,
    }
}

fn distance_km(leg: &Leg) -> f64 {
    match (leg.start_odo_km, leg.last_odo_km) {
        (Some(a), Some(b)) if b >= a && b - a < MAX_ODO_LEG_KM => b - a,
        _ => leg.gps_km,
    }
}

/// Close the leg at a refuel that found `before_g` in the tank: it becomes a sample.
fn close(state: &mut VehicleRuleState, leg: Leg, before_g: f32, how: Learning) {
    let used = leg.full_g - leg.low_g.min(before_g);
    ride::learn(
        state,
        distance_km(&leg),
        used,
        how.expected_km_per_g,
        how.window_km,
    );
}

/// A reading the rules acted on; `step_m` is the distance from the previous plausible fix
/// when this one is plausible.
pub(crate) fn observe(
    state: &mut VehicleRuleState,
    r: &Reading,
    step_m: Option<f64>,
    how: Learning,
) {
    let Some(mut leg) = state.leg else {
        state.leg = Some(leg_at(r.h2_g, r.odo_km));
        return;
    };
    if !leg.moving && r.h2_g >= leg.full_g {
        // Still filling (or standing full): the leg starts from the fullest tank.
        leg.full_g = r.h2_g;
        leg.low_g = r.h2_g;
    } else if r.h2_g > leg.low_g + how.refuel_min_g {
        close(state, leg, leg.low_g, how);
        state.leg = Some(leg_at(r.h2_g, r.odo_km.or(leg.last_odo_km)));
        return;
    }
    leg.low_g = leg.low_g.min(r.h2_g);
    let moving = r.speed_kmh >= STILL_KMH;
    if moving && let Some(step) = step_m.filter(|s| *s >= MIN_STEP_M) {
        leg.gps_km += step / 1000.0;
    }
    leg.moving |= moving;
    if let Some(odo) = r.odo_km {
        if leg.start_odo_km.is_none() && !leg.moving {
            leg.start_odo_km = Some(odo);
        }
        leg.last_odo_km = Some(odo);
    }
    state.leg = Some(leg);
}

/// A refuel event: the leg so far is a sample, and a new one starts at `after_g`.
pub(crate) fn refuelled(
    state: &mut VehicleRuleState,
    before_g: Option<f32>,
    after_g: f32,
    odo_km: Option<f64>,
    how: Learning,
) {
    let odo = odo_km.or(state.leg.and_then(|l| l.last_odo_km));
    if let Some(leg) = state.leg.take() {
        close(state, leg, before_g.unwrap_or(leg.low_g), how);
    }
    state.leg = Some(leg_at(after_g, odo));
}
