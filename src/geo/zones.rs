//! Zones (docs/alerts.md) and the R-tree index over them.
//!
//! Geometry is kept in WGS-84 degrees; every distance is measured in metres in a flat frame
//! centred on the point asked about. The R-tree holds bounding boxes in a scaled space
//! (`lon·cos φref`, `lat`) where degrees are nearly isotropic, so that its box distances are
//! usable lower bounds of real distances when looking for the nearest parking area.

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Crs;
use super::metric::{LocalFrame, M_PER_DEG_LAT, distance_m, origin_to_ring, ring_contains_origin};
use crate::domain::VehicleKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    Parking,
    NoParking,
    ServiceArea,
    Slow,
    Station,
}

impl ZoneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::Parking => "parking",
            ZoneKind::NoParking => "no_parking",
            ZoneKind::ServiceArea => "service_area",
            ZoneKind::Slow => "slow",
            ZoneKind::Station => "station",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "parking" => ZoneKind::Parking,
            "no_parking" => ZoneKind::NoParking,
            "service_area" => ZoneKind::ServiceArea,
            "slow" => ZoneKind::Slow,
            "station" => ZoneKind::Station,
            _ => return None,
        })
    }
}

/// A zone's area: polygons (outer ring then holes, `(lat, lon)` vertices), or a circle.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Polygons(Vec<Vec<Vec<(f64, f64)>>>),
    Circle { lat: f64, lon: f64, radius_m: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: String,
    pub name: String,
    pub kind: ZoneKind,
    /// The lower speed cap of a `slow` zone.
    pub max_speed_kmh: Option<f32>,
    pub shape: Shape,
    /// The vehicle kinds it applies to (`properties.kinds`); `None`: every kind.
    pub kinds: Option<Vec<VehicleKind>>,
    /// Its narrowest extent in metres (see [`width_m`]), worked out once at parsing.
    pub width_m: f64,
    /// The feature's properties as given (kept for the API and GBFS).
    pub properties: Map<String, Value>,
}

impl Zone {
    /// Whether the zone's rules bind a vehicle of this kind.
    pub fn applies_to(&self, kind: VehicleKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }

    /// Metres from the boundary: negative inside, positive outside.
    pub fn signed_distance_m(&self, lat: f64, lon: f64) -> f64 {
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => distance_m(lat, lon, *clat, *clon) - radius_m,
            Shape::Polygons(polys) => {
                let frame = LocalFrame::new(lat, lon);
                let mut edge = f64::INFINITY;
                let mut inside = false;
                for rings in polys {
                    let mut in_poly = false;
                    for (n, ring) in rings.iter().enumerate() {
                        let flat: Vec<(f64, f64)> =
                            ring.iter().map(|&(la, lo)| frame.project(la, lo)).collect();
                        edge = edge.min(origin_to_ring(&flat));
                        let contains = ring_contains_origin(&flat);
                        if n == 0 {
                            in_poly = contains;
                        } else if contains {
                            in_poly = false;
                        }
                    }
                    inside |= in_poly;
                }
                if inside { -edge } else { edge }
            }
        }
    }

    /// `(min_lat, min_lon, max_lat, max_lon)`.
    pub(crate) fn bounds(&self) -> (f64, f64, f64, f64) {
        match &self.shape {
            Shape::Circle { lat, lon, radius_m } => {
                let dlat = radius_m / M_PER_DEG_LAT;
                let dlon = dlat / lat.to_radians().cos().max(0.01);
                (lat - dlat, lon - dlon, lat + dlat, lon + dlon)
            }
            Shape::Polygons(polys) => {
                let mut b = (
                    f64::INFINITY,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::NEG_INFINITY,
                );
                for &(la, lo) in polys.iter().flatten().flatten() {
                    b = (b.0.min(la), b.1.min(lo), b.2.max(la), b.3.max(lo));
                }
                b
            }
        }
    }

    /// The geometry as GeoJSON in WGS-84 (`[lon, lat]` order).
    pub fn geometry_geojson(&self) -> Value {
        match &self.shape {
            Shape::Circle { lat, lon, .. } => {
                serde_json::json!({"type": "Point", "coordinates": [lon, lat]})
            }
            Shape::Polygons(polys) => {
                let coords: Vec<Vec<Vec<[f64; 2]>>> = polys
                    .iter()
                    .map(|rings| {
                        rings
                            .iter()
                            .map(|r| r.iter().map(|&(la, lo)| [lo, la]).collect())
                            .collect()
                    })
                    .collect();
                if coords.len() == 1 {
                    serde_json::json!({"type": "Polygon", "coordinates": coords[0]})
                } else {
                    serde_json::json!({"type": "MultiPolygon", "coordinates": coords})
                }
            }
        }
    }

    /// The zone as a GeoJSON Feature (WGS-84).
    pub fn to_feature(&self) -> Value {
        let mut props = self.properties.clone();
        props.insert("id".into(), Value::String(self.id.clone()));
        props.insert("name".into(), Value::String(self.name.clone()));
        props.insert("kind".into(), Value::String(self.kind.as_str().into()));
        serde_json::json!({
            "type": "Feature",
            "id": self.id,
            "properties": props,
            "geometry": self.geometry_geojson(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ZoneError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("{at}: {message}")]
    Feature { at: String, message: String },
}

fn feature_err(at: &str, message: impl Into<String>) -> ZoneError {
    ZoneError::Feature {
        at: at.to_owned(),
        message: message.into(),
    }
}

/// Parse a GeoJSON FeatureCollection (or a single Feature) drawn in `crs` into zones in
/// WGS-84. Every feature must carry `properties.id` (or a feature `id`) and `properties.kind`.
pub fn parse_zones(text: &str, crs: Crs) -> Result<Vec<Zone>, ZoneError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| ZoneError::Json(e.to_string()))?;
    let features: Vec<&Value> = match doc.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| feature_err("features", "must be an array"))?
            .iter()
            .collect(),
        Some("Feature") => vec![&doc],
        _ => {
            return Err(feature_err("type", "must be FeatureCollection or Feature"));
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut zones = Vec::with_capacity(features.len());
    for (n, f) in features.iter().enumerate() {
        let zone = parse_feature(f, crs).map_err(|e| match e {
            ZoneError::Feature { at, message } => {
                feature_err(&format!("features[{n}].{at}"), message)
            }
            other => other,
        })?;
        if !seen.insert(zone.id.clone()) {
            return Err(feature_err(
                &format!("features[{n}].properties.id"),
                format!("`{}` is used by an earlier feature", zone.id),
            ));
        }
        zones.push(zone);
    }
    Ok(zones)
}

/// One GeoJSON Feature to a zone; `crs` is the system its coordinates are drawn in.
pub fn parse_feature(f: &Value, crs: Crs) -> Result<Zone, ZoneError> {
    let props = f
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| feature_err("properties", "must be an object"))?;
    let id = match props.get("id").or_else(|| f.get("id")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(feature_err("properties.id", "a non-empty id is required")),
    };
    let kind_text = props.get("kind").and_then(Value::as_str).unwrap_or("");
    let kind = ZoneKind::parse(kind_text).ok_or_else(|| {
        feature_err(
            "properties.kind",
            format!("`{kind_text}` is not one of parking, no_parking, service_area, slow, station"),
        )
    })?;
    let name = props
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&id)
        .to_owned();
    let number = |key: &str| -> Result<Option<f64>, ZoneError> {
        match props.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(feature_err(
                    &format!("properties.{key}"),
                    "must be a positive number",
                )),
            },
        }
    };
    let max_speed_kmh = number("max_speed_kmh")?.map(|v| v as f32);
    if kind == ZoneKind::Slow && max_speed_kmh.is_none() {
        return Err(feature_err(
            "properties.max_speed_kmh",
            "a slow zone needs its speed cap",
        ));
    }
    let radius_m = number("radius_m")?;
    let kinds = vehicle_kinds(props.get("kinds"))?;
    let geom = f
        .get("geometry")
        .filter(|g| !g.is_null())
        .ok_or_else(|| feature_err("geometry", "is required"))?;
    let shape = parse_geometry(geom, crs, radius_m)?;
    Ok(Zone {
        id,
        name,
        kind,
        max_speed_kmh,
        width_m: width_m(&shape),
        shape,
        kinds,
        properties: props,
    })
}

/// `properties.kinds`: absent or null for every kind, else a non-empty list of kinds.
fn vehicle_kinds(v: Option<&Value>) -> Result<Option<Vec<VehicleKind>>, ZoneError> {
    let bad = || {
        feature_err(
            "properties.kinds",
            "must be a non-empty list of vehicle kinds (\"bike\", \"bus\")",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut kinds = Vec::with_capacity(items.len());
            for item in items {
                let k = item.as_str().and_then(VehicleKind::parse).ok_or_else(bad)?;
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            Ok(Some(kinds))
        }
        Some(_) => Err(bad()),
    }
}

/// A zone's narrowest extent, in metres: a circle's diameter; for polygons the smaller of the
/// convex hull's least caliper width and 4 × area / perimeter (which catches an L-shaped or
/// bent lane that a hull makes look wide). A multipolygon is as narrow as its narrowest part.
pub fn width_m(shape: &Shape) -> f64 {
    match shape {
        Shape::Circle { radius_m, .. } => 2.0 * radius_m,
        Shape::Polygons(polys) => polys
            .iter()
            .filter_map(|rings| {
                let &(lat0, lon0) = rings.first()?.first()?;
                let frame = LocalFrame::new(lat0, lon0);
                let flat: Vec<Vec<(f64, f64)>> = rings
                    .iter()
                    .map(|r| r.iter().map(|&(la, lo)| frame.project(la, lo)).collect())
                    .collect();
                Some(polygon_width(&flat))
            })
            .reduce(f64::min)
            .unwrap_or(0.0),
    }
}

fn polygon_width(rings: &[Vec<(f64, f64)>]) -> f64 {
    use geo::ConvexHull as _;
    let ring_area = |r: &[(f64, f64)]| {
        r.windows(2)
            .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
            .sum::<f64>()
            .abs()
            / 2.0
    };
    let ring_length = |r: &[(f64, f64)]| {
        r.windows(2)
            .map(|w| (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1))
            .sum::<f64>()
    };
    let Some(outer) = rings.first() else {
        return 0.0;
    };
    let area = ring_area(outer) - rings[1..].iter().map(|r| ring_area(r)).sum::<f64>();
    let perimeter: f64 = rings.iter().map(|r| ring_length(r)).sum();
    let shape_bound = if perimeter > 0.0 {
        4.0 * area.max(0.0) / perimeter
    } else {
        0.0
    };
    let line: geo::LineString<f64> = outer
        .iter()
        .map(|&(x, y)| geo::coord! {x: x, y: y})
        .collect();
    let hull = geo::Polygon::new(line, vec![]).convex_hull();
    let pts: Vec<(f64, f64)> = hull.exterior().points().map(|p| (p.x(), p.y())).collect();
    let mut caliper = f64::INFINITY;
    for w in pts.windows(2) {
        let (dx, dy) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
        let len = dx.hypot(dy);
        if len == 0.0 {
            continue;
        }
        let across = pts
            .iter()
            .map(|p| ((p.0 - w[0].0) * dy - (p.1 - w[0].1) * dx).abs() / len)
            .fold(0.0, f64::max);
        caliper = caliper.min(across);
    }
    caliper.min(shape_bound)
}

fn parse_geometry(g: &Value, crs: Crs, radius_m: Option<f64>) -> Result<Shape, ZoneError> {
    let coords = g
        .get("coordinates")
        .ok_or_else(|| feature_err("geometry.coordinates", "is required"))?;
    match g.get("type").and_then(Value::as_str) {
        Some("Point") => {
            let (lat, lon) = position(coords, crs)?;
            let radius_m = radius_m.ok_or_else(|| {
                feature_err(
                    "properties.radius_m",
                    "a Point zone needs a radius in metres",
                )
            })?;
            Ok(Shape::Circle { lat, lon, radius_m })
        }
        Some("Polygon") => Ok(Shape::Polygons(vec![polygon(coords, crs)?])),
        Some("MultiPolygon") => {
            let polys = coords
                .as_array()
                .ok_or_else(|| feature_err("geometry.coordinates", "must be an array"))?
                .iter()
                .map(|p| polygon(p, crs))
                .collect::<Result<Vec<_>, _>>()?;
            if polys.is_empty() {
                return Err(feature_err("geometry.coordinates", "has no polygon"));
            }
            Ok(Shape::Polygons(polys))
        }
        other => Err(feature_err(
            "geometry.type",
            format!("{other:?} is not Point, Polygon or MultiPolygon"),
        )),
    }
}

fn polygon(v: &Value, crs: Crs) -> Result<Vec<Vec<(f64, f64)>>, ZoneError> {
    let rings = v
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| feature_err("geometry.coordinates", "a polygon needs rings"))?;
    rings
        .iter()
        .map(|ring| {
            let pts = ring
                .as_array()
                .ok_or_else(|| feature_err("geometry.coordinates", "a ring must be an array"))?
                .iter()
                .map(|p| position(p, crs))
                .collect::<Result<Vec<_>, _>>()?;
            if pts.len() < 4 {
                return Err(feature_err(
                    "geometry.coordinates",
                    "a ring needs at least 4 positions (closed)",
                ));
            }
            Ok(pts)
        })
        .collect()
}

/// A GeoJSON position `[lon, lat]` in `crs` to `(lat, lon)` in WGS-84.
fn position(v: &Value, crs: Crs) -> Result<(f64, f64), ZoneError> {
    let arr = v.as_array().filter(|a| a.len() >= 2);
    let (lon, lat) = match arr.map(|a| (a[0].as_f64(), a[1].as_f64())) {
        Some((Some(lon), Some(lat))) => (lon, lat),
        _ => {
            return Err(feature_err(
                "geometry.coordinates",
                "a position must be [lon, lat]",
            ));
        }
    };
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(feature_err(
            "geometry.coordinates",
            format!("[{lon}, {lat}] is not a [lon, lat] position"),
        ));
    }
    Ok(crs.to_wgs84(lat, lon))
}

/// How close to a zone a fix counts as "at" it although outside: half the zone's width, at
/// most half the GPS tolerance. A fire lane is enforced however narrow it is, and a bike parked
/// beside a wide no-parking plaza is not caught by a margin as wide as the tolerance.
pub fn at_margin_m(width_m: f64, tolerance_m: f64) -> f64 {
    (width_m / 2.0).min(tolerance_m / 2.0).max(0.0)
}

/// A zone the query point is in or near.
#[derive(Debug, Clone, Copy)]
pub struct ZoneHit<'a> {
    pub zone: &'a Zone,
    /// Metres from the boundary: negative inside, positive outside.
    pub signed_m: f64,
}

type Entry = GeomWithData<Rectangle<[f64; 2]>, usize>;

/// Zones with an R-tree over their bounding boxes; cheap to share (`Arc`) and read-only.
#[derive(Debug, Default)]
pub struct ZoneIndex {
    zones: Vec<Zone>,
    all: RTree<Entry>,
    parking: RTree<Entry>,
    stations: RTree<Entry>,
    /// `cos` of the reference latitude that scales longitudes in the trees.
    kx: f64,
    has_service_area: bool,
}

impl ZoneIndex {
    pub fn new(zones: Vec<Zone>) -> Self {
        let n = zones.len().max(1) as f64;
        let ref_lat = zones
            .iter()
            .map(|z| {
                let b = z.bounds();
                (b.0 + b.2) / 2.0
            })
            .sum::<f64>()
            / n;
        let kx = ref_lat.to_radians().cos().max(0.01);
        let entry = |(i, z): (usize, &Zone)| {
            let b = z.bounds();
            GeomWithData::new(Rectangle::from_corners([b.1 * kx, b.0], [b.3 * kx, b.2]), i)
        };
        let of_kind = |k: ZoneKind| -> Vec<Entry> {
            zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.kind == k)
                .map(entry)
                .collect()
        };
        Self {
            all: RTree::bulk_load(zones.iter().enumerate().map(entry).collect()),
            parking: RTree::bulk_load(of_kind(ZoneKind::Parking)),
            stations: RTree::bulk_load(of_kind(ZoneKind::Station)),
            kx,
            has_service_area: zones.iter().any(|z| z.kind == ZoneKind::ServiceArea),
            zones,
        }
    }

    pub fn from_geojson(text: &str, crs: Crs) -> Result<Self, ZoneError> {
        parse_zones(text, crs).map(Self::new)
    }

    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Zone> {
        self.zones.iter().find(|z| z.id == id)
    }

    pub fn has_parking(&self) -> bool {
        self.parking.size() > 0
    }

    pub fn has_service_area(&self) -> bool {
        self.has_service_area
    }

    /// Whether any service area binds vehicles of this kind (a bus corridor does not bind
    /// bikes, which are then judged by the service areas that do, if any).
    pub fn has_service_area_for(&self, kind: VehicleKind) -> bool {
        self.has_service_area
            && self
                .zones
                .iter()
                .any(|z| z.kind == ZoneKind::ServiceArea && z.applies_to(kind))
    }

    /// Whether any parking area binds vehicles of this kind.
    pub fn has_parking_for(&self, kind: VehicleKind) -> bool {
        self.has_parking()
            && self
                .zones
                .iter()
                .any(|z| z.kind == ZoneKind::Parking && z.applies_to(kind))
    }

    /// Zones whose boundary is at most `margin_m` outside the point (so every zone containing
    /// it, plus those within the margin), with the signed distance to each.
    pub fn near(&self, lat: f64, lon: f64, margin_m: f64) -> Vec<ZoneHit<'_>> {
        // A degree of scaled longitude is a degree of latitude only at the reference latitude:
        // widen the box so that no zone is missed elsewhere in the city.
        let d = margin_m.max(0.0) / M_PER_DEG_LAT * 1.5 + 1e-6;
        let (x, y) = (lon * self.kx, lat);
        let aabb = AABB::from_corners([x - d, y - d], [x + d, y + d]);
        let mut hits: Vec<ZoneHit<'_>> = self
            .all
            .locate_in_envelope_intersecting(&aabb)
            .filter_map(|e| {
                let zone = &self.zones[e.data];
                let signed_m = zone.signed_distance_m(lat, lon);
                (signed_m <= margin_m).then_some(ZoneHit { zone, signed_m })
            })
            .collect();
        hits.sort_by(|a, b| a.signed_m.total_cmp(&b.signed_m));
        hits
    }

    /// The nearest parking area and the distance to it in metres (0 when inside).
    pub fn nearest_parking(&self, lat: f64, lon: f64) -> Option<(&Zone, f64)> {
        self.nearest_in(&self.parking, lat, lon, None)
    }

    /// The nearest parking area open to this kind of vehicle, and the distance to it.
    pub fn nearest_parking_for(
        &self,
        kind: VehicleKind,
        lat: f64,
        lon: f64,
    ) -> Option<(&Zone, f64)> {
        self.nearest_in(&self.parking, lat, lon, Some(kind))
    }

    /// The nearest refuelling station and the distance to it in metres (0 when inside).
    pub fn nearest_station(&self, lat: f64, lon: f64) -> Option<(&Zone, f64)> {
        self.nearest_in(&self.stations, lat, lon, None)
    }

    /// The nearest refuelling station that serves this kind of vehicle.
    pub fn nearest_station_for(
        &self,
        kind: VehicleKind,
        lat: f64,
        lon: f64,
    ) -> Option<(&Zone, f64)> {
        self.nearest_in(&self.stations, lat, lon, Some(kind))
    }

    fn nearest_in(
        &self,
        tree: &RTree<Entry>,
        lat: f64,
        lon: f64,
        kind: Option<VehicleKind>,
    ) -> Option<(&Zone, f64)> {
        let mut best: Option<(&Zone, f64)> = None;
        for (e, d2) in tree.nearest_neighbor_iter_with_distance_2(&[lon * self.kx, lat]) {
            // The box distance is a lower bound of the real one up to the scale error of
            // the reference latitude: stop once it cannot beat the best found, with slack.
            let lower_m = d2.sqrt() * M_PER_DEG_LAT * 0.8;
            if let Some((_, b)) = best
                && lower_m > b
            {
                break;
            }
            let zone = &self.zones[e.data];
            if kind.is_some_and(|k| !zone.applies_to(k)) {
                continue;
            }
            let d = zone.signed_distance_m(lat, lon).max(0.0);
            if best.is_none_or(|(_, b)| d < b) {
                best = Some((zone, d));
            }
        }
        best
    }
}

#[cfg(test)]
#[path = "zones_tests.rs"]
mod tests;
