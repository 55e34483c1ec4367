//! Geometry: coordinate systems, and (with the rules engine) zones and their index.

pub mod gcj02;

use serde::Deserialize;

/// The coordinate system that vehicles report and zone files are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crs {
    #[default]
    Wgs84,
    /// The offset system of Chinese map services, converted to WGS-84 on the way in.
    Gcj02,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// Coordinate system of vehicle positions.
    pub crs: Crs,
}

impl Crs {
    /// `(lat, lon)` in this system to WGS-84.
    pub fn to_wgs84(self, lat: f64, lon: f64) -> (f64, f64) {
        match self {
            Crs::Wgs84 => (lat, lon),
            Crs::Gcj02 => gcj02::gcj02_to_wgs84(lat, lon),
        }
    }
}
