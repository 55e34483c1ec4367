//! Incidents the simulator makes on purpose (`--incidents`), all within the first minute so that
//! a newcomer watching the demo sees alerts at once. Which vehicle does what is fixed:
//!
//! | vehicle | incident | alert it should raise |
//! |---|---|---|
//! | `XY-B0001` | rides ~200 m from its parking area and locks there, far from every parking area (ends ≈ 45 s) | `parking_violation` |
//! | `XY-B0002` | rides out of its parking area and locks 30 m beyond its edge (ends ≈ 20 s) | `parking_violation` (just outside) |
//! | `XY-B0003` | starts with 3 g (6 % of the tank) and rides over 800 m | `low_hydrogen` (critical) |
//! | `XY-B0004` | a tampered controller: its first ride runs at 29–32 km/h against the 23 km/h cap | `overspeed` |
//! | `XY-B0005` | parked and locked for good, reports every 10 s and loses 0.1 g each time (0.6 g/min) | `h2_leak_suspected` |
//! | `XY-B0006` | parked, reports every 15 s, goes silent 20 s after the start for 15 minutes | `offline` |
//! | `XY-B0007` | rides ~330 m to a no-parking zone that overlaps a parking area and locks inside it (ends ≈ 55 s) | `parking_violation` (no-parking) |
//! | `XY-B0008` | rides to a fire lane a few metres wide across a parking area (`NP05` in the sample) and locks in it (ends ≈ 40 s) | `parking_violation` (the lane named) |
//! | `XY-H0001` | waits at the Jiexiu terminal with 1.4 kg (5.6 % of its tank), 16 km from the nearest station, then drives back | `low_hydrogen` |
//! | `XY-H0002` | parked at the Xiaoyi terminal with its stack off (no lock: at rest by its fuel cell), loses 2 g/s (opens ≈ 7 min) | `h2_leak_suspected` |
//!
//! The spots are derived from the zones (the first parking area, in file order, where each
//! scenario fits), so other zone files get the same incidents at their own sites.

use super::bike::BikeScript;
use super::data::MapData;
use super::geom::LatLon;

/// How many bikes at the start of the fleet carry scripts.
pub const SCRIPTED_BIKES: usize = 8;
/// The silent bike: index, from and until (ms after the start).
pub const SILENT: (usize, i64, i64) = (5, 20_000, 20_000 + 15 * 60_000);
/// The bus with little hydrogen far from a station: index and grams.
pub const LOW_BUS: (usize, f64) = (0, 1_400.0);
/// The bus parked with a leak: index and grams lost per second. A bus's leak tolerance is
/// 200 g over a 300 s hold: past it after about 100 s, open about five minutes later.
pub const LEAKING_BUS: (usize, f64) = (1, 2.0);

/// The parking area a scripted bike starts in, and its script.
pub fn bike(index: usize, map: &MapData) -> Option<(usize, BikeScript)> {
    let s = BikeScript::default;
    Some(match index {
        0 => {
            let (area, spot) = far_outside(map)?;
            (
                area,
                BikeScript {
                    first_ride_at_ms: Some(2_000),
                    first_ride_to: Some(spot),
                    cruise_kmh: Some(20.0),
                    ..s()
                },
            )
        }
        1 => {
            let (area, spot) = just_outside(map)?;
            (
                area,
                BikeScript {
                    first_ride_at_ms: Some(4_000),
                    first_ride_to: Some(spot),
                    cruise_kmh: Some(12.0),
                    ..s()
                },
            )
        }
        2 => (
            2 % map.parking.len(),
            BikeScript {
                first_ride_at_ms: Some(5_000),
                first_ride_min_m: 800.0,
                h2_g: Some(3.0),
                ..s()
            },
        ),
        3 => (
            3 % map.parking.len(),
            BikeScript {
                first_ride_at_ms: Some(3_000),
                first_ride_min_m: 1_500.0,
                overspeed: true,
                ..s()
            },
        ),
        4 => (
            4 % map.parking.len(),
            BikeScript {
                never_rides: true,
                leak_g_per_report: 0.1,
                parked_every_ms: Some(10_000),
                ..s()
            },
        ),
        5 => (
            5 % map.parking.len(),
            BikeScript {
                never_rides: true,
                parked_every_ms: Some(15_000),
                ..s()
            },
        ),
        6 => {
            let (area, spot) = in_no_parking(map)?;
            (
                area,
                BikeScript {
                    first_ride_at_ms: Some(0),
                    first_ride_to: Some(spot),
                    cruise_kmh: Some(22.5),
                    ..s()
                },
            )
        }
        7 => {
            let (area, spot) = in_fire_lane(map)?;
            (
                area,
                BikeScript {
                    first_ride_at_ms: Some(1_000),
                    first_ride_to: Some(spot),
                    cruise_kmh: Some(20.0),
                    ..s()
                },
            )
        }
        _ => return None,
    })
}

/// The middle of a no-parking lane at most 10 m across that runs through a parking area (a
/// fire lane through a plaza's bike parking), reached from the nearest other parking area.
fn in_fire_lane(map: &MapData) -> Option<(usize, LatLon)> {
    let narrow = |z: &super::data::Area| {
        [0.0, 45.0, 90.0, 135.0].iter().any(|&b: &f64| {
            let (s, c) = b.to_radians().sin_cos();
            let a = z.centre.offset_m(5.5 * s, 5.5 * c);
            let b = z.centre.offset_m(-5.5 * s, -5.5 * c);
            !z.poly.contains(a) && !z.poly.contains(b)
        })
    };
    let spot = map
        .no_parking
        .iter()
        .find(|z| map.in_parking(z.centre) && narrow(z))?
        .centre;
    let start = map
        .parking
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.poly.contains(spot))
        .min_by(|a, b| {
            a.1.centre
                .distance_m(spot)
                .total_cmp(&b.1.centre.distance_m(spot))
        })?
        .0;
    Some((start, spot))
}

fn fine_to_ride(map: &MapData, p: LatLon) -> bool {
    map.in_service_area(p) && !map.in_parking(p) && !map.in_no_parking(p)
}

const BEARINGS: [f64; 8] = [90.0, 0.0, 180.0, 270.0, 45.0, 135.0, 225.0, 315.0];

fn far_outside(map: &MapData) -> Option<(usize, LatLon)> {
    map.parking.iter().enumerate().find_map(|(i, a)| {
        BEARINGS.iter().find_map(|&b| {
            let (s, c) = b.to_radians().sin_cos();
            let spot = a.centre.offset_m(200.0 * s, 200.0 * c);
            let clear = map
                .parking
                .iter()
                .all(|p| p.centre.distance_m(spot) >= 150.0);
            (clear && fine_to_ride(map, spot) && map.slow_cap(spot).is_none()).then_some((i, spot))
        })
    })
}

fn just_outside(map: &MapData) -> Option<(usize, LatLon)> {
    map.parking.iter().enumerate().skip(1).find_map(|(i, a)| {
        BEARINGS.iter().find_map(|&b| {
            let spot = a.poly.beyond_edge(b, 30.0);
            let clear = map
                .parking
                .iter()
                .all(|p| p.centre.distance_m(spot) >= 60.0);
            (clear && fine_to_ride(map, spot)).then_some((i, spot))
        })
    })
}

/// A no-parking spot that is also inside a parking area (where "even if it overlaps" matters),
/// reached from the nearest other parking area.
fn in_no_parking(map: &MapData) -> Option<(usize, LatLon)> {
    let zone = map
        .no_parking
        .iter()
        .find(|z| map.in_parking(z.centre))
        .or(map.no_parking.first())?;
    let spot = zone.centre;
    let start = map
        .parking
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.poly.contains(spot))
        .min_by(|a, b| {
            a.1.centre
                .distance_m(spot)
                .total_cmp(&b.1.centre.distance_m(spot))
        })?
        .0;
    Some((start, spot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scripted_bike_has_a_site_in_the_xiaoyi_sample() {
        let map = MapData::xiaoyi();
        for i in 0..SCRIPTED_BIKES {
            assert!(bike(i, &map).is_some(), "bike {i}");
        }
        assert!(bike(SCRIPTED_BIKES, &map).is_none());
        let (_, spot) = far_outside(&map).unwrap();
        let nearest = map
            .parking
            .iter()
            .map(|p| p.centre.distance_m(spot))
            .fold(f64::MAX, f64::min);
        assert!(nearest >= 150.0);
        let (area, spot) = just_outside(&map).unwrap();
        assert!(!map.in_parking(spot));
        assert!(
            map.parking[area].centre.distance_m(spot) < 80.0,
            "just outside its own area"
        );
        let (_, spot) = in_no_parking(&map).unwrap();
        assert!(map.in_no_parking(spot) && map.in_parking(spot));
        let (area, lane) = in_fire_lane(&map).unwrap();
        assert!(map.in_no_parking(lane) && map.in_parking(lane));
        assert_ne!(
            lane, spot,
            "a lane of its own, not the wide no-parking corner"
        );
        assert!(!map.parking[area].poly.contains(lane));
    }

    /// The leaking bus, as the demo publishes it, through the decoder and the rules: a
    /// suspected leak opens within ten minutes, with no lock to tell it is parked.
    #[test]
    fn the_parked_bus_with_a_leak_raises_h2_leak_suspected() {
        use std::sync::Arc;

        use crate::config::Config;
        use crate::decode::{Decoded, Decoder};
        use crate::domain::{Severity, VehicleKind};
        use crate::geo::ZoneIndex;
        use crate::rules::{AlertAction, Engine, Output, VehicleInfo, VehicleRuleState};
        use crate::sim::fleet::{Faults, Fleet, FleetConfig};

        let mut config = Config::default();
        config.mqtt.topic_root = "sim".into();
        let cfg = FleetConfig {
            topic_root: "sim".into(),
            bikes: 0,
            buses: 2,
            seed: 7,
            riding_every_ms: 1_000,
            parked_every_ms: 10_000,
            mean_idle_secs: 60.0,
            faults: Faults::default(),
            incidents: true,
        };
        let start = chrono::Utc::now() - chrono::Duration::hours(1);
        let mut fleet = Fleet::new(cfg, Arc::new(MapData::xiaoyi()), start);
        let decoder = Decoder::new(&config);
        let engine = Engine::new(
            &config.rules,
            &config.profiles,
            config.geo.crs,
            Arc::new(ZoneIndex::default()),
        )
        .unwrap();
        let info = VehicleInfo {
            kind: VehicleKind::Bus,
            tank_g: 25_000.0,
            km_per_g: None,
        };
        let mut state = VehicleRuleState::default();
        let mut opened = None;
        for s in 0..600 {
            let now = start + chrono::Duration::seconds(s);
            for o in fleet.step(now) {
                let mut d = Decoded::default();
                decoder.decode(&o.topic, &o.payload, now, &mut d);
                for r in d
                    .readings
                    .iter()
                    .filter(|r| r.vehicle.as_str() == "XY-H0002")
                {
                    assert_eq!(r.locked, None, "a bus has no lock");
                    for out in engine.on_reading(&mut state, r, &info) {
                        if let Output::Alert(a) = out
                            && a.rule == "h2_leak_suspected"
                            && a.action == AlertAction::Open(Severity::Critical)
                        {
                            opened.get_or_insert(s);
                        }
                    }
                }
            }
        }
        let at = opened.expect("a leak opens within ten minutes");
        assert!(at >= 300, "after the 300 s hold, not at once: {at} s");
    }
}
