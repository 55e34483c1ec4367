//! The feeds' contents, built from plain rows without I/O so that every mapping decision is
//! tested on its own. Each function returns the `data` object of one GBFS v3.0 file.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::GbfsConfig;
use super::rotate::IdRotation;
use super::stations::Station;
use crate::domain::VehicleKind;
use crate::domain::{Profile, Profiles};

/// The feeds every system of ours publishes, in the order `gbfs.json` lists them.
pub const FEEDS: [&str; 6] = [
    "system_information",
    "vehicle_types",
    "vehicle_status",
    "station_information",
    "station_status",
    "geofencing_zones",
];

/// A vehicle as the store knows it, with what the public feed needs.
#[derive(Debug, Clone)]
pub struct VehicleRow {
    pub code: String,
    pub kind: VehicleKind,
    pub lat: f64,
    pub lon: f64,
    pub h2_g: Option<f32>,
    pub tank_g: f32,
    pub range_km: Option<f32>,
    pub km_per_g: f32,
    pub locked: Option<bool>,
    pub online: Option<bool>,
    pub last_ts: Option<DateTime<Utc>>,
    /// End of the vehicle's last ride: the lock cycle its public id belongs to.
    pub last_ride_end: Option<DateTime<Utc>>,
    /// An open safety alert (tank fault, suspected leak): nobody should ride it.
    pub safety_alert: bool,
}

/// A zone as stored.
pub use crate::store::zones::StoredZone as ZoneRow;

pub fn envelope(data: Value, ttl: u32, now: DateTime<Utc>) -> Value {
    json!({
        "last_updated": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "ttl": ttl,
        "version": "3.0",
        "data": data,
    })
}

/// `base` ends with `/`.
pub fn discovery(base: &str) -> Value {
    let feeds: Vec<Value> = FEEDS
        .iter()
        .map(|name| json!({"name": name, "url": format!("{base}{name}.json")}))
        .collect();
    json!({ "feeds": feeds })
}

fn text(s: &str, language: &str) -> Value {
    json!([{ "text": s, "language": language }])
}

pub fn system_information(c: &GbfsConfig) -> Value {
    json!({
        "system_id": c.system_id,
        "languages": [c.language],
        "name": text(&c.name, &c.language),
        "operator": text(&c.operator, &c.language),
        "opening_hours": c.opening_hours,
        "feed_contact_email": c.feed_contact_email,
        "timezone": c.timezone,
    })
}

fn type_id(kind: VehicleKind) -> &'static str {
    kind.as_str()
}

pub fn vehicle_types(p: &Profiles, language: &str) -> Value {
    let one = |kind: VehicleKind, profile: &Profile, form: &str, name: &str, wheels: u32| {
        json!({
            "vehicle_type_id": type_id(kind),
            "form_factor": form,
            "propulsion_type": "hydrogen_fuel_cell",
            "max_range_meters": (f64::from(profile.range_km) * 1000.0).round(),
            "max_permitted_speed": profile.speed_cap_kmh.floor() as u32,
            "wheel_count": wheels,
            "name": text(name, language),
        })
    };
    json!({ "vehicle_types": [
        one(VehicleKind::Bike, &p.bike, "bicycle", "Hydrogen bike", 2),
        // GBFS has no bus form factor.
        one(VehicleKind::Bus, &p.bus, "other", "Fuel-cell bus", 4),
    ]})
}

/// Vehicles not in a ride, as GBFS defines the feed. Buses run a scheduled line and are never
/// for hire, so only bikes appear; a bike whose lock state is unknown is shown, since it is
/// not known to be in a ride.
/// A bike parked at a station carries its `station_id`, so that `station_status` counts and
/// this list agree.
pub fn vehicle_status(
    vehicles: &[VehicleRow],
    stations: &[Station<'_>],
    ids: &IdRotation,
) -> Value {
    let items: Vec<Value> = vehicles
        .iter()
        .filter(|v| super::stations::listed(v))
        .map(|v| {
            let h2 = v.h2_g.unwrap_or(0.0).max(0.0);
            let fuel = if v.tank_g > 0.0 {
                (h2 / v.tank_g).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let range_km = v.range_km.unwrap_or(h2 * v.km_per_g).max(0.0);
            let mut o = json!({
                "vehicle_id": ids.public_id(&v.code, v.last_ride_end),
                "lat": round6(v.lat),
                "lon": round6(v.lon),
                "is_reserved": false,
                "is_disabled": super::stations::disabled(v),
                "vehicle_type_id": type_id(v.kind),
                "current_fuel_percent": (f64::from(fuel) * 100.0).round() / 100.0,
                "current_range_meters": (f64::from(range_km) * 1000.0).round(),
            });
            if let Some(t) = v.last_ts {
                o["last_reported"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            if let Some(s) = super::stations::station_of(stations, v) {
                o["station_id"] = json!(s.zone.id);
            }
            o
        })
        .collect();
    json!({ "vehicles": items })
}

/// Parking areas as virtual stations: a free-floating system with designated parking, which
/// is what GBFS virtual stations are for. Their areas exclude the no-parking zones inside them
/// (see [`super::stations`]).
pub fn station_information(stations: &[Station<'_>], language: &str) -> Value {
    let items: Vec<Value> = stations
        .iter()
        .map(|s| {
            json!({
                "station_id": s.zone.id,
                "name": text(&s.zone.name, language),
                "lat": round6(s.lat),
                "lon": round6(s.lon),
                "is_virtual_station": true,
                "station_area": s.area_geojson,
            })
        })
        .collect();
    json!({ "stations": items })
}

/// Zone kinds as GBFS rules. Where zones overlap, GBFS lets the earlier feature win, so the
/// order is the order of precedence: a no-parking zone beats the parking area it cuts into,
/// and both beat the slow and service areas around them. Refuelling stations are for the
/// operator, not riders, and are left out. Outside every zone (the global rule) nothing is
/// allowed: that is outside the service area.
pub fn geofencing_zones(zones: &[ZoneRow], p: &Profiles, language: &str) -> Value {
    let rule = |start: bool, end: bool, through: bool| json!({"ride_start_allowed": start, "ride_end_allowed": end, "ride_through_allowed": through});
    let capped = |mut r: Value, kmh: f64| {
        r["maximum_speed_kph"] = json!(kmh.floor().max(0.0) as u64);
        r
    };
    let typed = |mut r: Value, kind: VehicleKind| {
        r["vehicle_type_ids"] = json!([type_id(kind)]);
        r
    };
    let rules_for = |z: &ZoneRow| -> Option<Vec<Value>> {
        Some(match z.kind.as_str() {
            "no_parking" => vec![rule(true, false, true)],
            "parking" => vec![rule(true, true, true)],
            "slow" => {
                let cap = z.properties.get("max_speed_kmh").and_then(Value::as_f64)?;
                vec![capped(rule(true, false, true), cap)]
            }
            "service_area" => vec![
                // A bike ride must end in a parking area, which comes earlier in the list.
                typed(
                    capped(rule(true, false, true), f64::from(p.bike.speed_cap_kmh)),
                    VehicleKind::Bike,
                ),
                typed(
                    capped(rule(true, true, true), f64::from(p.bus.speed_cap_kmh)),
                    VehicleKind::Bus,
                ),
            ],
            _ => return None,
        })
    };
    let precedence = |kind: &str| match kind {
        "no_parking" => 0,
        "parking" => 1,
        "slow" => 2,
        _ => 3,
    };
    let mut ordered: Vec<&ZoneRow> = zones.iter().collect();
    ordered.sort_by(|a, b| (precedence(&a.kind), &a.id).cmp(&(precedence(&b.kind), &b.id)));
    // A zone scoped to some kinds (`properties.kinds`) binds only their vehicle types.
    let scoped = |z: &ZoneRow, rules: Vec<Value>| -> Vec<Value> {
        if z.properties.get("kinds").is_none() {
            return rules;
        }
        let kinds: Vec<&str> = super::stations::kinds_of(z)
            .into_iter()
            .map(type_id)
            .collect();
        rules
            .into_iter()
            .filter_map(
                |mut r| match r.get("vehicle_type_ids").and_then(Value::as_array) {
                    Some(ids) => ids
                        .iter()
                        .any(|id| id.as_str().is_some_and(|id| kinds.contains(&id)))
                        .then_some(r),
                    None => {
                        r["vehicle_type_ids"] = json!(kinds);
                        Some(r)
                    }
                },
            )
            .collect()
    };
    let features: Vec<Value> = ordered
        .into_iter()
        .filter_map(|z| {
            let rules = scoped(z, rules_for(z)?);
            if rules.is_empty() {
                return None;
            }
            let geometry = multipolygon(&z.geometry, &z.properties)?;
            Some(json!({
                "type": "Feature",
                "geometry": geometry,
                "properties": { "name": text(&z.name, language), "rules": rules },
            }))
        })
        .collect();
    json!({
        "geofencing_zones": { "type": "FeatureCollection", "features": features },
        "global_rules": [rule(false, false, false)],
    })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A zone's geometry as the MultiPolygon GBFS requires; a point with `radius_m` becomes a
/// 32-sided polygon around it.
pub fn multipolygon(geometry: &Value, properties: &Value) -> Option<Value> {
    let coords = geometry.get("coordinates")?;
    match geometry.get("type")?.as_str()? {
        "MultiPolygon" => Some(json!({"type": "MultiPolygon", "coordinates": coords})),
        "Polygon" => Some(json!({"type": "MultiPolygon", "coordinates": [coords]})),
        "Point" => {
            let lon = coords.get(0)?.as_f64()?;
            let lat = coords.get(1)?.as_f64()?;
            let r = properties.get("radius_m")?.as_f64()?;
            Some(json!({"type": "MultiPolygon", "coordinates": [[circle(lat, lon, r)]]}))
        }
        _ => None,
    }
}

fn circle(lat: f64, lon: f64, radius_m: f64) -> Vec<[f64; 2]> {
    const N: usize = 32;
    let dlat = radius_m / 111_320.0;
    let dlon = dlat / lat.to_radians().cos();
    let mut ring: Vec<[f64; 2]> = (0..N)
        .map(|i| {
            // Counter-clockwise, as RFC 7946 asks of exterior rings.
            let a = std::f64::consts::TAU * i as f64 / N as f64;
            [round6(lon + dlon * a.cos()), round6(lat + dlat * a.sin())]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

/// Area-weighted centroid of the exterior rings: inside any convex parking area. Worked out
/// relative to the first vertex: with raw longitudes near 111° the cross products would cancel
/// away the digits a parking area of a few metres needs.
pub(super) fn centroid(mp: &Value) -> Option<(f64, f64)> {
    let (mut a_sum, mut x_sum, mut y_sum) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut origin = None;
    for poly in mp.get("coordinates")?.as_array()? {
        let ring: Vec<(f64, f64)> = poly
            .get(0)?
            .as_array()?
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect();
        let (ox, oy): (f64, f64) = *origin.get_or_insert(*ring.first()?);
        for w in ring.windows(2) {
            let ((x0, y0), (x1, y1)) = ((w[0].0 - ox, w[0].1 - oy), (w[1].0 - ox, w[1].1 - oy));
            let cross = x0 * y1 - x1 * y0;
            a_sum += cross;
            x_sum += (x0 + x1) * cross;
            y_sum += (y0 + y1) * cross;
        }
    }
    let (ox, oy) = origin?;
    if a_sum.abs() < 1e-18 {
        return None;
    }
    Some((oy + y_sum / (3.0 * a_sum), ox + x_sum / (3.0 * a_sum)))
}

#[cfg(test)]
#[path = "feeds_tests.rs"]
mod tests;
