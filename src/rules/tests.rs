//! The engine, exhaustively, without a database.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::domain::{Event, EventType, Reading, Severity, VehicleId, VehicleKind};
use crate::geo::{Crs, ZoneIndex};

const LAT: f64 = 37.145;
const LON: f64 = 111.781;
const M_LAT: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

fn m_lon() -> f64 {
    M_LAT * LAT.to_radians().cos()
}

/// `(lat, lon)` of a point `east`/`north` metres from the parking area's south-west corner.
fn at(east: f64, north: f64) -> (f64, f64) {
    (LAT + north / M_LAT, LON + east / m_lon())
}

fn square(
    id: &str,
    kind: &str,
    east: f64,
    north: f64,
    side: f64,
    extra: serde_json::Value,
) -> serde_json::Value {
    let (la0, lo0) = at(east, north);
    let (la1, lo1) = at(east + side, north + side);
    let mut props = json!({"id": id, "name": format!("{id} area"), "kind": kind});
    if let Some(o) = extra.as_object() {
        props.as_object_mut().unwrap().extend(o.clone());
    }
    json!({"type": "Feature", "properties": props, "geometry": {"type": "Polygon",
        "coordinates": [[[lo0, la0], [lo1, la0], [lo1, la1], [lo0, la1], [lo0, la0]]]}})
}

/// A 5 km service area around a 100 m parking area `P1` (with a 40 m no-parking corner
/// `NP` inside it) and a 200 m slow zone `S` to the east.
fn zones() -> Arc<ZoneIndex> {
    let fc = json!({"type": "FeatureCollection", "features": [
        square("CITY", "service_area", -2500.0, -2500.0, 5000.0, json!({})),
        square("P1", "parking", 0.0, 0.0, 100.0, json!({})),
        square("P2", "parking", 1000.0, 1000.0, 50.0, json!({})),
        square("NP", "no_parking", 60.0, 60.0, 40.0, json!({})),
        square("S", "slow", 500.0, 0.0, 200.0, json!({"max_speed_kmh": 10})),
    ]});
    Arc::new(ZoneIndex::from_geojson(&fc.to_string(), Crs::Wgs84).unwrap())
}

fn engine_with(config: Config) -> Engine {
    Engine::new(&config.rules, &config.profiles, config.geo.crs, zones()).unwrap()
}

fn engine() -> Engine {
    engine_with(Config::default())
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 4, 29, 8, 0, 0).unwrap() + Duration::seconds(secs)
}

fn bike() -> VehicleInfo {
    VehicleInfo {
        kind: VehicleKind::Bike,
        tank_g: 50.0,
        km_per_g: None,
    }
}

/// A riding bike inside `P1` at `secs`, with 40 g on board.
fn rd(secs: i64) -> Reading {
    let (lat, lon) = at(50.0, 50.0);
    Reading {
        speed_kmh: 12.0,
        h2_pressure_bar: Some(15.0),
        tank_temp_c: Some(20.0),
        locked: Some(false),
        ..Reading::bare("XY-B0001", t(secs), lat, lon, 40.0)
    }
}

fn placed(mut r: Reading, east: f64, north: f64) -> Reading {
    (r.lat, r.lon) = at(east, north);
    r
}

fn alerts(outputs: &[Output]) -> Vec<(String, Option<String>, AlertAction)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Alert(a) => Some((a.rule.clone(), a.zone.clone(), a.action)),
            _ => None,
        })
        .collect()
}

fn of_rule(outputs: &[Output], rule: &str) -> Vec<AlertAction> {
    alerts(outputs)
        .into_iter()
        .filter(|(r, _, _)| r == rule)
        .map(|(_, _, a)| a)
        .collect()
}

fn rides(outputs: &[Output]) -> Vec<Ride> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Ride(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Feed readings in order, collecting every output.
fn feed(
    e: &Engine,
    s: &mut VehicleRuleState,
    readings: impl IntoIterator<Item = Reading>,
) -> Vec<Output> {
    readings
        .into_iter()
        .flat_map(|r| e.on_reading(s, &r, &bike()))
        .collect()
}

#[test]
fn low_hydrogen_hovering_at_the_threshold_opens_nothing() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // 9.9 g and 10.1 g are 19.8 % and 20.2 % of 50 g: flapping across 20 % every 20 s.
    let out = feed(
        &e,
        &mut s,
        (0..60).map(|i| {
            let mut r = rd(i * 20);
            r.h2_g = if i % 2 == 0 { 9.9 } else { 10.1 };
            r
        }),
    );
    assert!(of_rule(&out, "low_hydrogen").is_empty(), "{out:?}");
}

#[test]
fn low_hydrogen_opens_once_after_its_hold_and_then_hovering_makes_no_storm() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let below = feed(
        &e,
        &mut s,
        (0..4).map(|i| {
            let mut r = rd(i * 30);
            r.h2_g = 9.5;
            r
        }),
    );
    assert_eq!(
        of_rule(&below, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    let Output::Alert(a) = below
        .iter()
        .find(|o| matches!(o, Output::Alert(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(a.at, t(60), "opens when held for 60 s, not at first sight");
    assert_eq!(a.details["h2_pct"], 19.0);
    // Hovering between 19 % and 24 % (inside warning + hysteresis) neither clears nor reopens.
    let hover = feed(
        &e,
        &mut s,
        (4..40).map(|i| {
            let mut r = rd(i * 30);
            r.h2_g = if i % 2 == 0 { 9.5 } else { 12.0 };
            r
        }),
    );
    assert!(of_rule(&hover, "low_hydrogen").is_empty(), "{hover:?}");
}

#[test]
fn drained_from_50_to_4_g_then_refuelled_opens_escalates_and_resolves() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = Vec::new();
    // Half a gram every 30 s: 50 g → 4 g, then the energy island fills it to 48 g.
    let mut secs = 0;
    let mut h2 = 50.0f32;
    while h2 >= 4.0 {
        let mut r = rd(secs);
        r.h2_g = h2;
        out.extend(e.on_reading(&mut s, &r, &bike()));
        h2 -= 0.5;
        secs += 30;
    }
    // Parked empty for a few minutes before the rider reaches an energy island.
    for _ in 0..4 {
        let mut r = rd(secs);
        r.h2_g = 4.0;
        out.extend(e.on_reading(&mut s, &r, &bike()));
        secs += 30;
    }
    let mut r = rd(secs + 600);
    r.h2_g = 48.0;
    out.extend(e.on_reading(&mut s, &r, &bike()));
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![
            AlertAction::Open(Severity::Warning),
            AlertAction::Escalate(Severity::Critical),
            AlertAction::Resolve
        ]
    );
    assert!(!s.is_open("low_hydrogen"));
}

#[test]
fn a_backlog_after_newer_readings_does_not_reopen_a_resolved_alert() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let low = |secs: i64, h2: f32| {
        let mut r = rd(secs);
        r.h2_g = h2;
        r
    };
    let out = feed(
        &e,
        &mut s,
        [low(0, 4.0), low(60, 4.0), low(120, 4.0), low(3600, 48.0)],
    );
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Critical), AlertAction::Resolve]
    );
    // The dead-zone backlog of the ride before the refuel arrives now.
    let backlog = feed(&e, &mut s, (0..20).map(|i| low(1800 + i * 30, 3.5)));
    assert!(alerts(&backlog).is_empty(), "{backlog:?}");
    assert!(!s.is_open("low_hydrogen"));
    // Nor does a late reading flip an open alert backwards.
    let out = feed(&e, &mut s, [low(4000, 4.0), low(4060, 4.0)]);
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    let late = feed(&e, &mut s, [low(3700, 48.0)]);
    assert!(alerts(&late).is_empty());
    assert!(s.is_open("low_hydrogen"));
}

#[test]
fn predicted_range_from_learned_consumption_drives_low_hydrogen() {
    let e = engine();
    // A bike that does only 0.5 km/g: 16 g (32 % of the tank) is 8 km, 13 % of 60 km.
    let mut s = VehicleRuleState {
        consumption: Some(super::state::Consumption { km: 50.0, g: 100.0 }),
        ..Default::default()
    };
    let out = feed(
        &e,
        &mut s,
        (0..3).map(|i| {
            let mut r = rd(i * 30);
            r.h2_g = 16.0;
            r
        }),
    );
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Warning)]
    );
}

#[test]
fn overspeed_needs_the_tolerance_and_the_hold_and_clears_below_the_cap() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let fast = |secs: i64, v: f32| {
        let mut r = placed(rd(secs), -1000.0, 0.0);
        r.speed_kmh = v;
        r
    };
    // One spike, and a speed inside the tolerance (cap 23 + 2) held for a minute.
    let out = feed(&e, &mut s, [fast(0, 30.0), fast(5, 20.0)]);
    assert!(of_rule(&out, "overspeed").is_empty());
    let out = feed(&e, &mut s, (2..14).map(|i| fast(i * 5, 24.9)));
    assert!(of_rule(&out, "overspeed").is_empty());
    // Held above the tolerance for 10 s: opens once.
    let out = feed(&e, &mut s, (14..20).map(|i| fast(i * 5, 28.0)));
    assert_eq!(
        of_rule(&out, "overspeed"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    // Between the cap and cap + tolerance it stays open; at the cap it clears.
    let out = feed(&e, &mut s, [fast(100, 24.0), fast(105, 23.5)]);
    assert!(of_rule(&out, "overspeed").is_empty());
    let out = feed(&e, &mut s, [fast(110, 22.0)]);
    assert_eq!(of_rule(&out, "overspeed"), vec![AlertAction::Resolve]);
}

#[test]
fn a_slow_zone_lowers_the_cap() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let out = feed(
        &e,
        &mut s,
        (0..4).map(|i| {
            let mut r = placed(rd(i * 5), 600.0, 100.0);
            r.speed_kmh = 18.0;
            r
        }),
    );
    let opened: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Alert(a) if a.rule == "overspeed" => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].details["slow_zone"], "S");
    assert_eq!(opened[0].details["cap_kmh"], 10.0);
}

/// Ride from inside P1 and lock at `(east, north)`, returning the outputs of the lock.
fn ride_and_lock(
    e: &Engine,
    s: &mut VehicleRuleState,
    start: i64,
    east: f64,
    north: f64,
    hdop: Option<f32>,
) -> Vec<Output> {
    let mut out = feed(
        e,
        s,
        (0..10).map(|i| {
            placed(
                rd(start + i * 10),
                50.0 + east * i as f64 / 10.0,
                50.0 + north * i as f64 / 10.0,
            )
        }),
    );
    let mut lock = placed(rd(start + 100), 50.0 + east, 50.0 + north);
    lock.locked = Some(true);
    lock.speed_kmh = 0.0;
    lock.hdop = hdop;
    out.extend(e.on_reading(s, &lock, &bike()));
    out
}

#[test]
fn a_ride_ending_3_m_outside_the_fence_is_inside_within_tolerance() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // P1 spans 0..100 m: 103 m east is 3 m outside.
    let out = ride_and_lock(&e, &mut s, 0, 53.0, 0.0, None);
    assert!(of_rule(&out, "parking_violation").is_empty(), "{out:?}");
    let ride = &rides(&out)[0];
    assert!(ride.ended_in_parking);
    assert_eq!(ride.parking_zone.as_deref(), Some("P1"));
}

#[test]
fn a_ride_ending_40_m_outside_names_the_nearest_parking_area_and_its_distance() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let out = ride_and_lock(&e, &mut s, 0, 90.0, 0.0, None);
    let alert = out
        .iter()
        .find_map(|o| match o {
            Output::Alert(a) if a.rule == "parking_violation" => Some(a.clone()),
            _ => None,
        })
        .expect("a violation");
    assert_eq!(alert.action, AlertAction::Open(Severity::Warning));
    assert_eq!(alert.zone, None);
    assert_eq!(alert.details["nearest_zone"], "P1");
    assert_eq!(alert.details["nearest_zone_name"], "P1 area");
    let d = alert.details["distance_m"].as_f64().unwrap();
    assert!((d - 40.0).abs() < 0.5, "{d}");
    assert!(!rides(&out)[0].ended_in_parking);
    // The next ride ends inside a parking area: the violation clears.
    let out = ride_and_lock(&e, &mut s, 1000, 0.0, 0.0, None);
    assert_eq!(
        of_rule(&out, "parking_violation"),
        vec![AlertAction::Resolve]
    );
}

#[test]
fn a_poor_fix_widens_the_tolerance_up_to_its_cap() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // hdop 1.8 allows 10 + 5 × 0.8 = 14 m: 13 m outside is not proof of a violation.
    let out = ride_and_lock(&e, &mut s, 0, 63.0, 0.0, Some(1.8));
    assert!(of_rule(&out, "parking_violation").is_empty(), "{out:?}");
    // hdop 8 would allow 45 m; the cap (rules.max_gps_tolerance_m = 15) does not: 40 m
    // outside is a violation however poor the fix.
    let out = ride_and_lock(&e, &mut s, 1000, 90.0, 0.0, Some(8.0));
    assert_eq!(
        of_rule(&out, "parking_violation"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    assert_eq!(e.tolerance_m(Some(8.0)), 15.0);
}

#[test]
fn ending_in_a_no_parking_zone_inside_a_parking_area_is_a_violation() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // NP covers 60..100 m of P1 in both directions; lock at (80, 80), 20 m inside it.
    let out = ride_and_lock(&e, &mut s, 0, 30.0, 30.0, None);
    let v = alerts(&out);
    assert_eq!(
        v,
        vec![(
            "parking_violation".into(),
            Some("NP".into()),
            AlertAction::Open(Severity::Warning)
        )]
    );
    assert!(!rides(&out)[0].ended_in_parking);
}

#[test]
fn one_noisy_fix_is_flagged_and_decides_no_geofence() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = feed(&e, &mut s, (0..5).map(|i| placed(rd(i * 10), 50.0, 50.0)));
    // A 10 km jump for one fix (outside the service area), then back; locked at the jump.
    let mut jump = placed(rd(50), 10_000.0, 0.0);
    jump.locked = Some(true);
    jump.speed_kmh = 0.0;
    out.extend(e.on_reading(&mut s, &jump, &bike()));
    out.extend(feed(
        &e,
        &mut s,
        (6..20).map(|i| {
            let mut r = placed(rd(i * 10), 50.0, 50.0);
            r.locked = Some(true);
            r.speed_kmh = 0.0;
            r
        }),
    ));
    assert_eq!(
        of_rule(&out, "gps_implausible"),
        vec![AlertAction::Open(Severity::Warning), AlertAction::Resolve]
    );
    assert!(of_rule(&out, "out_of_service_area").is_empty());
    assert!(
        of_rule(&out, "parking_violation").is_empty(),
        "the ride ended at the last good fix"
    );
    let ride = &rides(&out)[0];
    assert!(ride.ended_in_parking);
    assert!(
        ride.distance_km < 0.01,
        "the jump adds no distance: {}",
        ride.distance_km
    );
}

#[test]
fn a_wrong_first_fix_is_replaced_when_the_next_fixes_agree() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = feed(&e, &mut s, [placed(rd(0), 10_000.0, 0.0)]);
    out.extend(feed(
        &e,
        &mut s,
        (1..4).map(|i| placed(rd(i * 10), 50.0, 50.0)),
    ));
    assert_eq!(
        of_rule(&out, "gps_implausible"),
        vec![AlertAction::Open(Severity::Warning), AlertAction::Resolve]
    );
    let (lat, _) = at(50.0, 50.0);
    assert!((s.fix.unwrap().lat - lat).abs() < 1e-9);
}

#[test]
fn out_of_service_area_needs_a_while_outside_and_clears_back_inside() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // Each fix 100 m on from the last, heading out of the city area (edge at 2500 m east).
    let path = |from: i64, to: i64| {
        (from..to)
            .map(|i| placed(rd(i * 10), 2300.0 + i as f64 * 20.0, 0.0))
            .collect::<Vec<_>>()
    };
    let out = feed(&e, &mut s, path(0, 16));
    assert!(of_rule(&out, "out_of_service_area").is_empty(), "{out:?}");
    let out = feed(&e, &mut s, path(16, 24));
    assert_eq!(
        of_rule(&out, "out_of_service_area"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    let out = feed(&e, &mut s, [placed(rd(250), 2480.0, 0.0)]);
    assert_eq!(
        of_rule(&out, "out_of_service_area"),
        vec![AlertAction::Resolve]
    );
}

#[test]
fn tank_fault_opens_on_a_held_excursion_or_fault_codes_and_clears_in_band() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let p = |secs: i64, bar: f32| {
        let mut r = rd(secs);
        r.h2_pressure_bar = Some(bar);
        r
    };
    let out = feed(&e, &mut s, [p(0, 55.0), p(5, 20.0)]);
    assert!(of_rule(&out, "tank_fault").is_empty(), "one glitch");
    let out = feed(&e, &mut s, [p(10, 55.0), p(15, 56.0), p(20, 57.0)]);
    assert_eq!(
        of_rule(&out, "tank_fault"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    let out = feed(&e, &mut s, [p(25, 20.0)]);
    assert_eq!(of_rule(&out, "tank_fault"), vec![AlertAction::Resolve]);
    let faulty = |secs: i64| {
        let mut r = rd(secs);
        r.faults = vec!["H2_SENSOR".into()];
        r
    };
    let out = feed(&e, &mut s, [faulty(30), faulty(40)]);
    assert_eq!(
        of_rule(&out, "tank_fault"),
        vec![AlertAction::Open(Severity::Warning)]
    );
}

#[test]
fn hydrogen_lost_while_locked_and_still_is_a_suspected_leak_until_refuelled() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let parked = |secs: i64, h2: f32| {
        let mut r = rd(secs);
        r.locked = Some(true);
        r.speed_kmh = 0.0;
        r.h2_g = h2;
        r
    };
    // Within the tolerance (2 g): nothing.
    let out = feed(
        &e,
        &mut s,
        (0..10).map(|i| parked(i * 60, 30.0 - 0.15 * i as f32)),
    );
    assert!(of_rule(&out, "h2_leak_suspected").is_empty());
    // 30 g → 26 g over ten minutes parked: opens after its 2 min hold.
    let out = feed(
        &e,
        &mut s,
        (10..20).map(|i| parked(i * 60, 30.0 - 0.4 * (i - 9) as f32)),
    );
    assert_eq!(
        of_rule(&out, "h2_leak_suspected"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    let refuel = Event {
        vehicle: VehicleId::parse("XY-B0001").unwrap(),
        kind: VehicleKind::Bike,
        ts: t(1300),
        event_type: EventType::Refuel,
        body: json!({"h2_g_before": 26.0, "h2_g_after": 49.0, "station_id": "S1"}),
    };
    let out = e.on_event(&mut s, &refuel, &bike());
    assert_eq!(
        of_rule(&out, "h2_leak_suspected"),
        vec![AlertAction::Resolve]
    );
    // Riding uses hydrogen: no leak.
    let out = feed(
        &e,
        &mut s,
        (22..40).map(|i| {
            let mut r = rd(i * 60);
            r.h2_g = 49.0 - (i - 21) as f32;
            r
        }),
    );
    assert!(of_rule(&out, "h2_leak_suspected").is_empty());
}

#[test]
fn offline_opens_after_silence_and_clears_on_any_message() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    assert!(
        e.on_tick(&mut s, &bike(), t(0)).is_empty(),
        "never seen: nothing to miss"
    );
    assert!(alerts(&e.on_seen(&mut s, t(0))).is_empty());
    assert_eq!(e.offline_due(&s, VehicleKind::Bike), Some(t(600)));
    assert!(e.on_tick(&mut s, &bike(), t(599)).is_empty());
    assert_eq!(
        of_rule(&e.on_tick(&mut s, &bike(), t(600)), "offline"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    assert!(e.on_tick(&mut s, &bike(), t(900)).is_empty(), "open once");
    assert_eq!(e.offline_due(&s, VehicleKind::Bike), None);
    assert_eq!(
        of_rule(&e.on_seen(&mut s, t(1000)), "offline"),
        vec![AlertAction::Resolve]
    );
}

#[test]
fn rides_carry_distance_and_hydrogen_and_the_refuel_after_teaches_consumption() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = Vec::new();
    for i in 0..=12 {
        let mut r = placed(rd(i * 60), 50.0 + i as f64 * 500.0, 50.0);
        r.odo_km = Some(100.0 + i as f64 * 0.5);
        r.h2_g = 40.0 - i as f32 * 0.6;
        r.locked = Some(i == 12);
        out.extend(e.on_reading(&mut s, &r, &bike()));
    }
    let ride = &rides(&out)[0];
    assert_eq!(ride.started_at, t(0));
    assert_eq!(ride.ended_at, t(720));
    assert!(
        (ride.distance_km - 6.0).abs() < 1e-9,
        "odometer: {}",
        ride.distance_km
    );
    assert!((ride.h2_used_g - 7.2).abs() < 1e-3, "{}", ride.h2_used_g);
    assert!(
        s.learned_km_per_g().is_none(),
        "consumption is learned between refuels"
    );
    // Parked, then refuelled: the stretch since the first reading is a sample.
    let mut refuel = placed(rd(2000), 6050.0, 50.0);
    (refuel.locked, refuel.speed_kmh, refuel.h2_g, refuel.odo_km) =
        (Some(true), 0.0, 49.0, Some(106.0));
    e.on_reading(&mut s, &refuel, &bike());
    let learned = s.learned_km_per_g().expect("6 km is enough to learn");
    assert!((learned - 6.0 / 7.2).abs() < 1e-3, "{learned}");
    assert!((e.km_per_g(&s, &bike()) - learned).abs() < 1e-6);
}

#[test]
fn without_an_odometer_the_ride_is_measured_along_its_fixes() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = feed(
        &e,
        &mut s,
        (0..=10).map(|i| placed(rd(i * 30), 50.0 + i as f64 * 100.0, 50.0)),
    );
    let mut lock = placed(rd(330), 1050.0, 50.0);
    lock.locked = Some(true);
    out.extend(e.on_reading(&mut s, &lock, &bike()));
    let ride = &rides(&out)[0];
    assert!(
        (ride.distance_km - 1.0).abs() < 0.01,
        "{}",
        ride.distance_km
    );
    assert!(
        s.learned_km_per_g().is_none(),
        "1 km teaches too little to trust"
    );
}

#[test]
fn ride_events_start_and_end_rides_even_when_they_arrive_late() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let ev = |secs: i64, ty: EventType, body: serde_json::Value| Event {
        vehicle: VehicleId::parse("XY-B0001").unwrap(),
        kind: VehicleKind::Bike,
        ts: t(secs),
        event_type: ty,
        body,
    };
    let mut parked = rd(0);
    parked.locked = None;
    feed(&e, &mut s, [parked]);
    e.on_event(&mut s, &ev(10, EventType::RideStart, json!({})), &bike());
    let mut r = placed(rd(200), 50.0, 50.0);
    r.locked = None;
    feed(&e, &mut s, [r]);
    // The ride's end (at 190 s, 40 m outside P1) arrives after the reading at 200 s.
    let (lat, lon) = at(140.0, 50.0);
    let out = e.on_event(
        &mut s,
        &ev(190, EventType::RideEnd, json!({"lat": lat, "lon": lon})),
        &bike(),
    );
    let ride = &rides(&out)[0];
    assert_eq!((ride.started_at, ride.ended_at), (t(10), t(190)));
    let a = alerts(&out);
    assert_eq!(
        a,
        vec![(
            "parking_violation".into(),
            None,
            AlertAction::Open(Severity::Warning)
        )]
    );
    assert!(
        out.iter()
            .all(|o| !matches!(o, Output::Alert(a) if a.at < t(200))),
        "alerts never go back in time"
    );
}

#[test]
fn an_operator_resolution_lets_a_lasting_condition_open_a_new_incident() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let low = |secs: i64| {
        let mut r = rd(secs);
        r.h2_g = 4.0;
        r
    };
    assert_eq!(
        of_rule(&feed(&e, &mut s, [low(0), low(60)]), "low_hydrogen").len(),
        1
    );
    s.forget("low_hydrogen", None);
    let out = feed(&e, &mut s, [low(90), low(120), low(150)]);
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Critical)]
    );
}

fn custom_config(toml_rules: &str) -> Result<Config, crate::config::ConfigError> {
    Config::from_toml_and_env(toml_rules, "test", Vec::<(String, String)>::new())
}

#[test]
fn a_custom_cel_rule_from_configuration_opens_and_clears() {
    let config = custom_config(
        r#"
        [[rules.custom]]
        name = "fuel_cell_hot"
        when = "has(reading.fc_temp_c) && reading.fc_temp_c > 70.0 && vehicle.riding"
        clear_when = "reading.fc_temp_c < 60.0"
        hold_secs = 10
        severity = "critical"
        "#,
    )
    .unwrap();
    let e = engine_with(config);
    let mut s = VehicleRuleState::default();
    let hot = |secs: i64, c: Option<f32>| {
        let mut r = rd(secs);
        r.fc_temp_c = c;
        r
    };
    let out = feed(
        &e,
        &mut s,
        [hot(0, Some(75.0)), hot(5, Some(65.0)), hot(10, Some(75.0))],
    );
    assert!(
        of_rule(&out, "fuel_cell_hot").is_empty(),
        "not held for 10 s"
    );
    let out = feed(&e, &mut s, [hot(15, Some(76.0)), hot(20, Some(77.0))]);
    assert_eq!(
        of_rule(&out, "fuel_cell_hot"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    // 65 °C is between the two conditions; a missing field makes the expression err.
    let out = feed(&e, &mut s, [hot(25, Some(65.0)), hot(30, None)]);
    assert!(of_rule(&out, "fuel_cell_hot").is_empty(), "{out:?}");
    let out = feed(&e, &mut s, [hot(35, Some(55.0))]);
    assert_eq!(of_rule(&out, "fuel_cell_hot"), vec![AlertAction::Resolve]);
}

#[test]
fn custom_rules_see_the_zone_the_vehicle_is_in() {
    let config = custom_config(
        r#"
        [[rules.custom]]
        name = "riding_through_no_parking"
        when = "zone != null && zone.kind == 'no_parking' && reading.speed_kmh > 5.0"
        "#,
    )
    .unwrap();
    let e = engine_with(config);
    let mut s = VehicleRuleState::default();
    let out = feed(
        &e,
        &mut s,
        [placed(rd(0), 90.0, 90.0), placed(rd(5), 50.0, 50.0)],
    );
    assert_eq!(
        of_rule(&out, "riding_through_no_parking"),
        vec![AlertAction::Open(Severity::Warning), AlertAction::Resolve]
    );
}

#[test]
fn a_broken_custom_rule_is_refused_at_load_with_its_position() {
    let err =
        custom_config("[[rules.custom]]\nname = \"broken\"\nwhen = \"reading.speed_kmh > \"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("custom[0].when"), "{err}");
    assert!(err.contains("line 1, column"), "{err}");
    let err =
        custom_config("[[rules.custom]]\nname = \"typo\"\nwhen = \"reading.speeed_kmh > 20.0\"\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("custom[0].when") && err.contains("speeed_kmh"),
        "{err}"
    );
    let err =
        custom_config("[[rules.custom]]\nname = \"num\"\nwhen = \"reading.speed_kmh * 2.0\"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("boolean"), "{err}");
    let err = custom_config("[[rules.custom]]\nname = \"overspeed\"\nwhen = \"true\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("built-in"), "{err}");
}

#[test]
fn rule_state_round_trips_through_json_and_stays_small() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    feed(
        &e,
        &mut s,
        (0..100).map(|i| {
            let mut r = placed(rd(i * 10), 50.0 + i as f64 * 20.0, 50.0);
            r.h2_g = 9.0;
            r.odo_km = Some(i as f64 * 0.02);
            r
        }),
    );
    e.on_seen(&mut s, t(1000));
    let json = serde_json::to_value(&s).unwrap();
    let back: VehicleRuleState = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, s);
    assert!(json.to_string().len() < 1024, "{json}");
    assert!(back.is_open("low_hydrogen"));
}

#[test]
fn the_engine_is_shared_across_ingest_tasks() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
}

#[test]
fn a_syntax_error_points_at_its_column() {
    let err = super::custom::compile("reading.speed_kmh >> 3.0").unwrap_err();
    assert!(err.contains("line 1, column 20"), "{err}");
}

/// Zones of their own: a 5 m no-parking lane across `P1` (north-south, 45–50 m east), a bus
/// corridor far east, and a slow zone for bikes only.
fn field_zones() -> Arc<ZoneIndex> {
    let lane = |id: &str, east: f64, width: f64| {
        let (la0, lo0) = at(east, -5.0);
        let (la1, lo1) = at(east + width, 105.0);
        json!({"type": "Feature", "properties": {"id": id, "name": format!("{id} lane"),
            "kind": "no_parking", "kinds": ["bike"]}, "geometry": {"type": "Polygon",
            "coordinates": [[[lo0, la0], [lo1, la0], [lo1, la1], [lo0, la1], [lo0, la0]]]}})
    };
    let fc = json!({"type": "FeatureCollection", "features": [
        square("CITY", "service_area", -2500.0, -2500.0, 5000.0, json!({})),
        square("ROAD", "service_area", 2500.0, -100.0, 5000.0, json!({"kinds": ["bus"]})),
        square("P1", "parking", 0.0, 0.0, 100.0, json!({"kinds": ["bike"]})),
        lane("LANE", 45.0, 5.0),
        square("S", "slow", 500.0, 0.0, 200.0, json!({"max_speed_kmh": 10, "kinds": ["bike"]})),
    ]});
    Arc::new(ZoneIndex::from_geojson(&fc.to_string(), Crs::Wgs84).unwrap())
}

#[test]
fn a_ride_ending_in_a_lane_narrower_than_gps_error_is_a_violation_naming_it() {
    let c = Config::default();
    let e = Engine::new(&c.rules, &c.profiles, c.geo.crs, field_zones()).unwrap();
    // In the lane (47.5 m east, its middle), 1.5 m beside it (half its width is the margin),
    // and 4 m beside it.
    for (n, east) in [(0, -2.5), (1, 1.5), (2, -9.0)] {
        let mut s = VehicleRuleState::default();
        let out = ride_and_lock(&e, &mut s, n * 1000, east, 0.0, Some(0.9));
        let v = alerts(&out);
        if east > -3.0 {
            assert_eq!(
                v,
                vec![(
                    "parking_violation".into(),
                    Some("LANE".into()),
                    AlertAction::Open(Severity::Warning)
                )],
                "{east}"
            );
            assert!(!rides(&out)[0].ended_in_parking);
        } else {
            assert!(
                v.is_empty(),
                "4 m beside a 5 m lane is the parking area: {v:?}"
            );
            assert!(rides(&out)[0].ended_in_parking);
        }
    }
}

#[test]
fn zones_bind_only_the_kinds_they_name() {
    let c = Config::default();
    let e = Engine::new(&c.rules, &c.profiles, c.geo.crs, field_zones()).unwrap();
    let bus = VehicleInfo {
        kind: VehicleKind::Bus,
        tank_g: 25_000.0,
        km_per_g: None,
    };
    // On the road 3 km east, outside CITY: out of service for a bike, not for a bus.
    let on_road = |secs: i64, kind: VehicleKind| {
        let mut r = placed(rd(secs), 3000.0 + secs as f64, 50.0);
        r.kind = kind;
        r.h2_g = if kind == VehicleKind::Bus {
            20_000.0
        } else {
            40.0
        };
        r.locked = (kind == VehicleKind::Bike).then_some(false);
        r
    };
    let (mut sb, mut sh) = (VehicleRuleState::default(), VehicleRuleState::default());
    let mut bike_out = Vec::new();
    let mut bus_out = Vec::new();
    for i in 0..20 {
        bike_out.extend(e.on_reading(&mut sb, &on_road(i * 10, VehicleKind::Bike), &bike()));
        bus_out.extend(e.on_reading(&mut sh, &on_road(i * 10, VehicleKind::Bus), &bus));
    }
    assert_eq!(
        of_rule(&bike_out, "out_of_service_area"),
        vec![AlertAction::Open(Severity::Warning)]
    );
    assert!(
        of_rule(&bus_out, "out_of_service_area").is_empty(),
        "{bus_out:?}"
    );
    // In the slow zone at 40 km/h: a bus is under its own cap; the zone is not for it.
    let mut s = VehicleRuleState::default();
    let mut out = Vec::new();
    for i in 0..5 {
        let mut r = placed(rd(i * 10), 600.0, 100.0);
        r.kind = VehicleKind::Bus;
        r.speed_kmh = 40.0;
        r.h2_g = 20_000.0;
        r.locked = None;
        out.extend(e.on_reading(&mut s, &r, &bus));
    }
    assert!(of_rule(&out, "overspeed").is_empty(), "{out:?}");
}

#[test]
fn positions_of_no_value_move_nothing_and_do_not_become_plausible_by_repeating() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let mut out = feed(&e, &mut s, (0..5).map(|i| placed(rd(i * 10), 50.0, 50.0)));
    let mut flagged = placed(rd(55), 3000.0, 3000.0);
    flagged.extra = Some(json!({"fix": false}).as_object().unwrap().clone());
    let mut wide = placed(rd(58), 3000.0, 3000.0);
    wide.hdop = Some(25.0);
    out.extend(feed(
        &e,
        &mut s,
        [
            Reading {
                lat: 0.0,
                lon: 0.0,
                ..rd(52)
            },
            Reading {
                lat: 0.0,
                lon: 0.0,
                ..rd(54)
            },
            flagged,
            wide,
        ],
    ));
    let mut lock = Reading {
        lat: 0.0,
        lon: 0.0,
        ..rd(60)
    };
    lock.locked = Some(true);
    out.extend(e.on_reading(&mut s, &lock, &bike()));
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    let ride = &rides(&out)[0];
    let (la, lo) = at(50.0, 50.0);
    assert_eq!(ride.end, Some((la, lo)), "the last good fix");
    assert!(ride.ended_in_parking);
    assert!(ride.distance_km < 0.01, "{}", ride.distance_km);
    assert_eq!(s.fix.map(|f| (f.lat, f.lon)), Some((la, lo)));
}

fn bus() -> VehicleInfo {
    VehicleInfo {
        kind: VehicleKind::Bus,
        tank_g: 25_000.0,
        km_per_g: None,
    }
}

/// A bus (no lock) standing at the Xiaoyi depot at `secs`, stack off, with `h2` grams.
fn parked_bus(secs: i64, h2: f32) -> Reading {
    let (lat, lon) = at(50.0, 50.0);
    Reading {
        kind: VehicleKind::Bus,
        speed_kmh: 0.0,
        fc_power_w: Some(0.0),
        h2_pressure_bar: Some(300.0),
        tank_temp_c: Some(20.0),
        ..Reading::bare("XY-H0001", t(secs), lat, lon, h2)
    }
}

fn feed_bus(
    e: &Engine,
    s: &mut VehicleRuleState,
    readings: impl IntoIterator<Item = Reading>,
) -> Vec<Output> {
    readings
        .into_iter()
        .flat_map(|r| e.on_reading(s, &r, &bus()))
        .collect()
}

#[test]
fn a_bus_parked_for_hours_with_its_stack_off_losing_hydrogen_is_a_suspected_leak() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // A night at the depot: a reading a minute, 15 g lost each minute (0.9 kg an hour).
    let out = feed_bus(
        &e,
        &mut s,
        (0..120).map(|i| parked_bus(i * 60, 20_000.0 - 15.0 * i as f32)),
    );
    assert_eq!(
        of_rule(&out, "h2_leak_suspected"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    // Idling at a stop with the stack on uses hydrogen: that is no leak.
    let mut s = VehicleRuleState::default();
    let out = feed_bus(
        &e,
        &mut s,
        (0..120).map(|i| {
            let mut r = parked_bus(i * 60, 20_000.0 - 15.0 * i as f32);
            r.fc_power_w = Some(3_000.0);
            r
        }),
    );
    assert!(of_rule(&out, "h2_leak_suspected").is_empty(), "{out:?}");
    // Nor is a firmware that does not report the stack's power judged at all without a lock.
    let mut s = VehicleRuleState::default();
    let out = feed_bus(
        &e,
        &mut s,
        (0..120).map(|i| {
            let mut r = parked_bus(i * 60, 20_000.0 - 15.0 * i as f32);
            r.fc_power_w = None;
            r
        }),
    );
    assert!(of_rule(&out, "h2_leak_suspected").is_empty(), "{out:?}");
}

#[test]
fn a_full_350_bar_tank_on_a_hot_day_is_no_tank_fault() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let hot = |secs: i64, bar: f32| {
        let mut r = parked_bus(secs, 24_500.0);
        r.h2_pressure_bar = Some(bar);
        r.tank_temp_c = Some(60.0);
        r
    };
    // 350 bar at 15 °C is about 410 bar at 60 °C: within 1.25 × 350 = 437.5 bar.
    let out = feed_bus(&e, &mut s, (0..10).map(|i| hot(i * 10, 410.0)));
    assert!(of_rule(&out, "tank_fault").is_empty(), "{out:?}");
    // Above the maximum operating pressure it is a fault, with the band it left.
    let out = feed_bus(&e, &mut s, (10..20).map(|i| hot(i * 10, 445.0)));
    assert_eq!(
        of_rule(&out, "tank_fault"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    let band = out
        .iter()
        .find_map(|o| match o {
            Output::Alert(a) if a.rule == "tank_fault" => {
                Some(a.details["pressure_band_bar"].clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(band, json!([0.0, 437.5]));
    // The bike's metal hydride store: nominal 30 bar, so 37.5 bar tops its band.
    let mut s = VehicleRuleState::default();
    let p = |secs: i64, bar: f32| {
        let mut r = rd(secs);
        r.h2_pressure_bar = Some(bar);
        r
    };
    let out = feed(&e, &mut s, (0..5).map(|i| p(i * 10, 36.0)));
    assert!(of_rule(&out, "tank_fault").is_empty());
    let out = feed(&e, &mut s, (5..10).map(|i| p(i * 10, 39.0)));
    assert_eq!(
        of_rule(&out, "tank_fault"),
        vec![AlertAction::Open(Severity::Critical)]
    );
}

#[test]
fn a_partial_refuel_above_critical_takes_the_alert_back_to_warning() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let low = |secs: i64, h2: f32| {
        let mut r = rd(secs);
        r.h2_g = h2;
        r
    };
    // 4 g (8 %) for two minutes: critical.
    let out = feed(&e, &mut s, (0..5).map(|i| low(i * 30, 4.0)));
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    // A wobble just above critical (10.4 %) is not a refuel: still critical.
    let out = feed(&e, &mut s, (5..10).map(|i| low(i * 30, 5.2)));
    assert!(of_rule(&out, "low_hydrogen").is_empty(), "{out:?}");
    // A partial refuel to 8 g (16 %): above critical + hysteresis, below the clear level.
    let out = feed(&e, &mut s, (10..15).map(|i| low(i * 30, 8.0)));
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Deescalate(Severity::Warning)]
    );
    assert_eq!(s.open_severity("low_hydrogen"), Some(Severity::Warning));
    // Draining again escalates again; a full tank resolves.
    let out = feed(&e, &mut s, (15..20).map(|i| low(i * 30, 4.0)));
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Escalate(Severity::Critical)]
    );
    let out = feed(&e, &mut s, [low(700, 48.0)]);
    assert_eq!(of_rule(&out, "low_hydrogen"), vec![AlertAction::Resolve]);
}

#[test]
fn a_partial_refuel_event_takes_the_alert_back_to_warning() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let out = feed(
        &e,
        &mut s,
        (0..5).map(|i| {
            let mut r = rd(i * 30);
            r.h2_g = 4.0;
            r
        }),
    );
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Open(Severity::Critical)]
    );
    let refuel = Event {
        vehicle: VehicleId::parse("XY-B0001").unwrap(),
        kind: VehicleKind::Bike,
        ts: t(200),
        event_type: EventType::Refuel,
        body: json!({"h2_g_before": 4.0, "h2_g_after": 9.0, "station_id": "S1"}),
    };
    let out = e.on_event(&mut s, &refuel, &bike());
    assert_eq!(
        of_rule(&out, "low_hydrogen"),
        vec![AlertAction::Deescalate(Severity::Warning)]
    );
}

/// A bus driving `km` at 60 km/h from `secs` with the odometer at `odo`, burning `g_per_km`,
/// a reading a minute; returns the readings and where it ended.
fn drive_bus(secs: i64, odo: f64, h2: f32, km: f64, g_per_km: f32) -> Vec<Reading> {
    let n = km as i64;
    (0..=n)
        .map(|i| {
            let mut r = parked_bus(secs + i * 60, h2 - g_per_km * i as f32);
            r.speed_kmh = 60.0;
            r.fc_power_w = Some(40_000.0);
            r.odo_km = Some(odo + i as f64);
            r
        })
        .collect()
}

/// A bus at an energy island from `secs`: the tank rises 1 kg a minute from `from` to `to`.
fn refuel_bus(secs: i64, odo: f64, from: f32, to: f32) -> Vec<Reading> {
    let steps = ((to - from) / 1000.0).ceil() as i64;
    (1..=steps)
        .map(|i| {
            let mut r = parked_bus(secs + i * 60, (from + 1000.0 * i as f32).min(to));
            r.fc_power_w = Some(0.0);
            r.odo_km = Some(odo);
            r
        })
        .collect()
}

#[test]
fn a_bus_learns_its_consumption_over_three_refuels() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    // 80 g/km (0.0125 km/g), against the profile's assumed 71 g/km.
    let mut secs = 0;
    let mut odo = 30_000.0;
    feed_bus(&e, &mut s, refuel_bus(secs, odo, 5_000.0, 24_000.0));
    secs += 3_600;
    assert!(s.learned_km_per_g().is_none());
    for leg in 0..3 {
        feed_bus(&e, &mut s, drive_bus(secs, odo, 24_000.0, 200.0, 80.0));
        secs += 201 * 60;
        odo += 200.0;
        feed_bus(&e, &mut s, refuel_bus(secs, odo, 8_000.0, 24_000.0));
        secs += 3_600;
        let learned = s
            .learned_km_per_g()
            .unwrap_or_else(|| panic!("learned after refuel {}", leg + 2));
        assert!((learned - 0.0125).abs() < 0.0002, "{learned}");
    }
    assert!((e.km_per_g(&s, &bus()) - 0.0125).abs() < 0.0002);
}

#[test]
fn without_an_odometer_a_bus_learns_along_its_fixes() {
    let e = engine();
    let mut s = VehicleRuleState::default();
    let moving = |i: i64| {
        // 1 km a minute eastwards (60 km/h), 80 g a kilometre.
        let mut r = placed(
            parked_bus(i * 60, 24_000.0 - 80.0 * i as f32),
            50.0 + 1000.0 * i as f64,
            50.0,
        );
        r.speed_kmh = 60.0;
        r.fc_power_w = Some(40_000.0);
        r
    };
    feed_bus(&e, &mut s, (0..=20).map(moving));
    // Parked at the island (GPS wander of a few metres is not distance), then filled.
    feed_bus(
        &e,
        &mut s,
        (21..40).map(|i| {
            let mut r = placed(
                parked_bus(i * 60, 22_400.0),
                20_050.0 + (i % 3) as f64 * 4.0,
                50.0,
            );
            r.h2_g = 22_400.0;
            r
        }),
    );
    let mut full = placed(parked_bus(45 * 60, 24_500.0), 20_050.0, 50.0);
    full.h2_g = 24_500.0;
    feed_bus(&e, &mut s, [full]);
    let learned = s.learned_km_per_g().expect("20 km is enough to learn");
    assert!((learned - 0.0125).abs() < 0.0005, "{learned}");
}
