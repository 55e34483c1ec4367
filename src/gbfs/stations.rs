//! Parking areas as GBFS virtual stations: their areas with the no-parking zones cut out, and
//! their status.
//!
//! GBFS lets a virtual station's `station_area` win over overlapping geofencing rules, so a
//! no-parking zone inside a parking area (a fire lane through a plaza's bike parking) would be
//! advertised as a place to end a ride. The published area is therefore the parking area minus
//! every no-parking zone that binds the same vehicles.

use chrono::{DateTime, Utc};
use geo::{BooleanOps as _, Contains as _, InteriorPoint as _};
use geo::{Coord, LineString, MultiPolygon, Point, Polygon};
use serde_json::{Value, json};

use super::feeds::{VehicleRow, ZoneRow, multipolygon};
use crate::domain::VehicleKind;

/// A station as published: the parking zone, what is left of its area, and a point inside it.
#[derive(Debug, Clone)]
pub struct Station<'a> {
    /// Its place in the list, which `station_status` follows.
    pub index: usize,
    pub zone: &'a ZoneRow,
    pub area: MultiPolygon<f64>,
    /// `area` as GeoJSON: the zone's own geometry when nothing was cut from it.
    pub area_geojson: Value,
    pub lat: f64,
    pub lon: f64,
}

/// The vehicle kinds a zone row binds (`properties.kinds`; absent: every kind).
pub fn kinds_of(z: &ZoneRow) -> Vec<VehicleKind> {
    match z.properties.get("kinds").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .filter_map(|k| k.as_str().and_then(VehicleKind::parse))
            .collect(),
        None => VehicleKind::ALL.to_vec(),
    }
}

/// Only bikes are for hire (see `vehicle_status`): stations and the zones cut from them are
/// those that bind bikes.
fn binds_bikes(z: &ZoneRow) -> bool {
    kinds_of(z).contains(&VehicleKind::Bike)
}

/// GeoJSON MultiPolygon coordinates to geo's type (`[lon, lat]` as x, y).
fn to_geo(mp: &Value) -> Option<MultiPolygon<f64>> {
    let ring = |r: &Value| -> Option<LineString<f64>> {
        r.as_array()?
            .iter()
            .map(|p| {
                Some(Coord {
                    x: p.get(0)?.as_f64()?,
                    y: p.get(1)?.as_f64()?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .map(LineString::new)
    };
    let polys = mp
        .get("coordinates")?
        .as_array()?
        .iter()
        .map(|p| {
            let rings = p.as_array()?;
            let exterior = ring(rings.first()?)?;
            let holes = rings[1..].iter().map(ring).collect::<Option<Vec<_>>>()?;
            Some(Polygon::new(exterior, holes))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(MultiPolygon::new(polys))
}

/// geo's MultiPolygon as GeoJSON, rounded to 7 decimals (1 cm) and with exterior rings
/// counter-clockwise, as RFC 7946 asks.
pub fn to_geojson(mp: &MultiPolygon<f64>) -> Value {
    use geo::orient::{Direction, Orient as _};
    let oriented = mp.orient(Direction::Default);
    let round = |x: f64| (x * 1e7).round() / 1e7;
    let ring = |l: &LineString<f64>| -> Vec<[f64; 2]> {
        l.coords().map(|c| [round(c.x), round(c.y)]).collect()
    };
    let coords: Vec<Vec<Vec<[f64; 2]>>> = oriented
        .iter()
        .map(|p| {
            std::iter::once(ring(p.exterior()))
                .chain(p.interiors().iter().map(ring))
                .collect()
        })
        .collect();
    json!({"type": "MultiPolygon", "coordinates": coords})
}

/// Every parking area for bikes as a station, the no-parking zones for bikes cut out; an area
/// wholly covered by no-parking zones is no station at all.
pub fn stations(zones: &[ZoneRow]) -> Vec<Station<'_>> {
    let no_parking: Vec<(&ZoneRow, MultiPolygon<f64>)> = zones
        .iter()
        .filter(|z| z.kind == "no_parking" && binds_bikes(z))
        .filter_map(|z| Some((z, to_geo(&multipolygon(&z.geometry, &z.properties)?)?)))
        .collect();
    let mut out: Vec<Station<'_>> = zones
        .iter()
        .filter(|z| z.kind == "parking" && binds_bikes(z))
        .filter_map(|z| {
            let drawn = multipolygon(&z.geometry, &z.properties)?;
            let whole = to_geo(&drawn)?;
            let mut area = whole.clone();
            let mut cut = false;
            for (_, shape) in &no_parking {
                if geo::Intersects::intersects(&area, shape) {
                    area = area.difference(shape);
                    cut = true;
                }
            }
            if area.0.is_empty() {
                return None;
            }
            // The centroid of an uncut area (as before); a point surely inside a cut one,
            // where the centroid may fall in the lane that was cut out.
            let centre = if cut {
                area.interior_point()?
            } else {
                match super::feeds::centroid(&drawn) {
                    Some((lat, lon)) => Point::new(lon, lat),
                    None => whole.interior_point()?,
                }
            };
            Some(Station {
                index: 0,
                zone: z,
                area_geojson: if cut { to_geojson(&area) } else { drawn },
                area,
                lat: centre.y(),
                lon: centre.x(),
            })
        })
        .collect();
    for (i, s) in out.iter_mut().enumerate() {
        s.index = i;
    }
    out
}

/// Which station a parked vehicle is at, if any.
pub fn station_of<'s, 'z>(stations: &'s [Station<'z>], v: &VehicleRow) -> Option<&'s Station<'z>> {
    let p = Point::new(v.lon, v.lat);
    stations
        .iter()
        .find(|s| kinds_of(s.zone).contains(&v.kind) && s.area.contains(&p))
}

/// Whether a vehicle counts as parked and for hire, as `vehicle_status` lists it.
pub fn listed(v: &VehicleRow) -> bool {
    v.kind == VehicleKind::Bike && v.locked != Some(false) && v.lat.is_finite() && v.lon.is_finite()
}

/// Whether a listed vehicle cannot be rented now.
pub fn disabled(v: &VehicleRow) -> bool {
    v.online == Some(false) || v.safety_alert || v.h2_g.unwrap_or(0.0) <= 0.0
}

/// `station_status`: one entry per station of `station_information`. Virtual stations have
/// no docks, so `num_docks_available` and `vehicle_docks_available` are left out, as GBFS
/// v3.0 allows for stations of unlimited capacity.
pub fn station_status(
    stations: &[Station<'_>],
    vehicles: &[VehicleRow],
    now: DateTime<Utc>,
) -> Value {
    let mut available = vec![[0u32; 2]; stations.len()];
    let mut off = vec![0u32; stations.len()];
    let slot = |k: VehicleKind| match k {
        VehicleKind::Bike => 0,
        VehicleKind::Bus => 1,
    };
    for v in vehicles.iter().filter(|v| listed(v)) {
        let Some(i) = station_of(stations, v).map(|s| s.index) else {
            continue;
        };
        if disabled(v) {
            off[i] += 1;
        } else {
            available[i][slot(v.kind)] += 1;
        }
    }
    let now = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let items: Vec<Value> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let kinds = kinds_of(s.zone);
            let by_type: Vec<Value> = kinds
                .iter()
                .filter(|k| **k == VehicleKind::Bike || available[i][slot(**k)] > 0)
                .map(|k| json!({"vehicle_type_id": k.as_str(), "count": available[i][slot(*k)]}))
                .collect();
            json!({
                "station_id": s.zone.id,
                "num_vehicles_available": available[i].iter().sum::<u32>(),
                "num_vehicles_disabled": off[i],
                "vehicle_types_available": by_type,
                "is_installed": true,
                "is_renting": true,
                "is_returning": kinds.contains(&VehicleKind::Bike),
                "last_reported": now,
            })
        })
        .collect();
    json!({ "stations": items })
}
