//! The map and profiles the simulated fleet lives in: the Xiaoyi sample files embedded in the
//! binary, or other files of the same format.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use super::geom::{LatLon, Polygon};
use crate::domain::Profiles;

use crate::sample::{BUS_ROUTE_GEOJSON, PROFILES_TOML, ZONES_GEOJSON};

#[derive(Debug, Clone)]
pub struct Area {
    pub id: String,
    pub poly: Polygon,
    pub centre: LatLon,
}

#[derive(Debug, Clone)]
pub struct SlowZone {
    pub poly: Polygon,
    pub max_speed_kmh: f64,
}

#[derive(Debug, Clone)]
pub struct Station {
    pub id: String,
    pub at: LatLon,
}

#[derive(Debug, Clone)]
pub struct MapData {
    pub parking: Vec<Area>,
    pub no_parking: Vec<Area>,
    pub slow: Vec<SlowZone>,
    pub service: Vec<Polygon>,
    pub stations: Vec<Station>,
    /// The bus line, terminal to terminal.
    pub route: Vec<LatLon>,
    /// Bus stops, in any order; they are placed on the route by nearest vertex.
    pub stops: Vec<LatLon>,
    pub profiles: Profiles,
}

#[derive(Deserialize)]
struct ProfilesFile {
    profiles: Profiles,
}

impl MapData {
    /// The embedded Xiaoyi sample.
    pub fn xiaoyi() -> Self {
        Self::parse(ZONES_GEOJSON, BUS_ROUTE_GEOJSON, PROFILES_TOML)
            .expect("the embedded Xiaoyi sample is valid (checked by a test)")
    }

    pub fn parse(zones: &str, route: &str, profiles: &str) -> anyhow::Result<Self> {
        let profiles: ProfilesFile = toml::from_str(profiles).context("profiles file")?;
        let mut m = MapData {
            parking: vec![],
            no_parking: vec![],
            slow: vec![],
            service: vec![],
            stations: vec![],
            route: vec![],
            stops: vec![],
            profiles: profiles.profiles,
        };
        let zones: Value = serde_json::from_str(zones).context("zones file is not JSON")?;
        for f in features(&zones).context("zones file")? {
            let props = &f["properties"];
            let id = props["id"].as_str().or(f["id"].as_str()).unwrap_or("");
            let kind = props["kind"].as_str().unwrap_or("");
            let geom = &f["geometry"];
            if kind == "station" {
                let at = point(geom).with_context(|| format!("station {id}"))?;
                m.stations.push(Station { id: id.into(), at });
                continue;
            }
            for poly in polygons(geom).with_context(|| format!("zone {id}"))? {
                let area = || Area {
                    id: id.into(),
                    centre: poly.centre(),
                    poly: poly.clone(),
                };
                match kind {
                    "parking" => m.parking.push(area()),
                    "no_parking" => m.no_parking.push(area()),
                    "service_area" => m.service.push(poly.clone()),
                    "slow" => m.slow.push(SlowZone {
                        max_speed_kmh: props["max_speed_kmh"]
                            .as_f64()
                            .with_context(|| format!("slow zone {id} has no max_speed_kmh"))?,
                        poly: poly.clone(),
                    }),
                    _ => {}
                }
            }
        }
        let route: Value = serde_json::from_str(route).context("bus route file is not JSON")?;
        for f in features(&route).context("bus route file")? {
            let geom = &f["geometry"];
            match geom["type"].as_str() {
                Some("LineString") if m.route.is_empty() => m.route = line(geom)?,
                Some("Point") => m.stops.push(point(geom)?),
                _ => {}
            }
        }
        if m.parking.len() < 2 {
            bail!("the zones need at least two parking areas for bikes to ride between");
        }
        if m.stations.is_empty() {
            bail!("the zones need at least one station");
        }
        if m.route.len() < 2 {
            bail!("the bus route file has no LineString");
        }
        Ok(m)
    }

    pub fn in_service_area(&self, p: LatLon) -> bool {
        self.service.iter().any(|s| s.contains(p))
    }

    pub fn in_parking(&self, p: LatLon) -> bool {
        self.parking.iter().any(|a| a.poly.contains(p))
    }

    pub fn in_no_parking(&self, p: LatLon) -> bool {
        self.no_parking.iter().any(|a| a.poly.contains(p))
    }

    /// The lowest slow-zone cap at `p`, if any.
    pub fn slow_cap(&self, p: LatLon) -> Option<f64> {
        self.slow
            .iter()
            .filter(|z| z.poly.contains(p))
            .map(|z| z.max_speed_kmh)
            .reduce(f64::min)
    }

    pub fn nearest_station(&self, p: LatLon) -> usize {
        nearest(self.stations.iter().map(|s| s.at), p)
    }

    pub fn nearest_parking(&self, p: LatLon) -> usize {
        nearest(self.parking.iter().map(|a| a.centre), p)
    }
}

fn nearest(points: impl Iterator<Item = LatLon>, p: LatLon) -> usize {
    points
        .enumerate()
        .min_by(|a, b| a.1.distance_m(p).total_cmp(&b.1.distance_m(p)))
        .map_or(0, |(i, _)| i)
}

fn features(v: &Value) -> anyhow::Result<&Vec<Value>> {
    v["features"]
        .as_array()
        .context("not a GeoJSON FeatureCollection")
}

fn pos(v: &Value) -> anyhow::Result<LatLon> {
    match (v[0].as_f64(), v[1].as_f64()) {
        (Some(lon), Some(lat)) => Ok(LatLon::new(lat, lon)),
        _ => bail!("a position is not [lon, lat]"),
    }
}

fn point(geom: &Value) -> anyhow::Result<LatLon> {
    if geom["type"] != "Point" {
        bail!("geometry is not a Point");
    }
    pos(&geom["coordinates"])
}

fn line(geom: &Value) -> anyhow::Result<Vec<LatLon>> {
    geom["coordinates"]
        .as_array()
        .context("LineString without coordinates")?
        .iter()
        .map(pos)
        .collect()
}

/// Outer rings of a Polygon or MultiPolygon.
fn polygons(geom: &Value) -> anyhow::Result<Vec<Polygon>> {
    let ring = |rings: &Value| -> anyhow::Result<Polygon> {
        let ring = line(&serde_json::json!({ "coordinates": rings[0] }))?;
        if ring.len() < 4 {
            bail!("a polygon ring needs at least 4 positions");
        }
        Ok(Polygon { ring })
    };
    match geom["type"].as_str() {
        Some("Polygon") => Ok(vec![ring(&geom["coordinates"])?]),
        Some("MultiPolygon") => geom["coordinates"]
            .as_array()
            .context("MultiPolygon without coordinates")?
            .iter()
            .map(ring)
            .collect(),
        other => bail!("geometry {other:?} is not a Polygon or MultiPolygon"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_xiaoyi_sample_is_complete_and_consistent() {
        let m = MapData::xiaoyi();
        assert!(m.parking.len() >= 24, "a few dozen parking areas");
        assert_eq!(m.stations.len(), 4);
        assert!(!m.no_parking.is_empty() && !m.slow.is_empty());
        assert_eq!(m.profiles.bike.tank_g, 50.0);
        assert_eq!(m.profiles.bus.tank_g, 25_000.0);
        // Every parking area is small, inside the service area, and its centre is inside it.
        for a in &m.parking {
            assert!(a.poly.contains(a.centre), "{}", a.id);
            assert!(
                m.in_service_area(a.centre),
                "{} outside the service area",
                a.id
            );
            let span = a
                .poly
                .ring
                .iter()
                .map(|p| p.distance_m(a.centre))
                .fold(0.0, f64::max);
            assert!((15.0..=50.0).contains(&span), "{} spans {span} m", a.id);
        }
        // The whole bus line is inside some service area, and ends near Jiexiu.
        for p in &m.route {
            assert!(m.in_service_area(*p), "route vertex {p:?} outside");
        }
        let jiexiu = LatLon::new(37.027, 111.913);
        assert!(m.route.last().unwrap().distance_m(jiexiu) < 500.0);
        assert!(m.stops.len() >= 2);
        // The sample's parking areas carry every category the fleet serves.
        let zones: Value = serde_json::from_str(ZONES_GEOJSON).unwrap();
        let cats: std::collections::BTreeSet<_> = zones["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["properties"]["category"].as_str())
            .collect();
        for c in [
            "shopping",
            "school",
            "hospital",
            "housing",
            "park",
            "government",
        ] {
            assert!(cats.contains(c), "no {c} parking");
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let err = MapData::parse("{}", BUS_ROUTE_GEOJSON, PROFILES_TOML).unwrap_err();
        assert!(format!("{err:#}").contains("FeatureCollection"), "{err:#}");
        let err =
            MapData::parse(ZONES_GEOJSON, BUS_ROUTE_GEOJSON, "[profiles.bike]\n").unwrap_err();
        assert!(format!("{err:#}").contains("profiles"), "{err:#}");
    }
}
