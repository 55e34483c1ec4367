//! Geometry: coordinate systems, zones and the index that answers "which zones is this point
//! in, and how far is the nearest parking area".

pub mod fix;
pub mod gcj02;
mod import;
pub mod metric;
mod zones;

use std::path::PathBuf;

use serde::Deserialize;

pub use import::{Placement, check_place, crs_note, gcj02_offset_m, narrow_zones};
pub use metric::{LocalFrame, distance_m};
pub use zones::{
    Shape, Zone, ZoneError, ZoneHit, ZoneIndex, ZoneKind, at_margin_m, parse_feature, parse_zones,
    width_m,
};

/// The coordinate system that vehicles report and zone files are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crs {
    #[default]
    Wgs84,
    /// The offset system of Chinese map services, converted to WGS-84 on the way in.
    Gcj02,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// Coordinate system of vehicle positions (what the GPS modules report).
    pub crs: Crs,
    /// Coordinate system of zone files; when unset, the same as `crs` (a fence drawn on the
    /// same Chinese map the vehicles' modules use). Fences drawn on a Chinese map for a fleet
    /// whose modules report WGS-84 need this one alone: `crs` would move every vehicle too.
    pub zones_crs: Option<Crs>,
    /// GeoJSON FeatureCollection loaded into the `zones` table when it is empty.
    pub zones_file: PathBuf,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            crs: Crs::Wgs84,
            zones_crs: None,
            zones_file: PathBuf::from("data/xiaoyi/zones.geojson"),
        }
    }
}

impl GeoConfig {
    pub fn zones_crs(&self) -> Crs {
        self.zones_crs.unwrap_or(self.crs)
    }

    /// `Err((option, message))` names the option below `geo.` that is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.zones_file.as_os_str().is_empty() {
            return Err(("zones_file".into(), "must name a GeoJSON file".into()));
        }
        Ok(())
    }
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
