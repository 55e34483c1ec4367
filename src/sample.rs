//! The Xiaoyi sample data (`data/xiaoyi/`), embedded in the binary: the zones a new
//! installation starts with, and what the simulator drives its fleet over.

/// Zones of the Xiaoyi sample (GeoJSON FeatureCollection, WGS-84).
pub const ZONES_GEOJSON: &str = include_str!("../data/xiaoyi/zones.geojson");
/// The Xiaoyi–Jiexiu bus line and its stops.
pub const BUS_ROUTE_GEOJSON: &str = include_str!("../data/xiaoyi/bus_route.geojson");
/// `[profiles.*]` of the Xiaoyi fleet, in the configuration file's format.
pub const PROFILES_TOML: &str = include_str!("../data/xiaoyi/profiles.toml");
