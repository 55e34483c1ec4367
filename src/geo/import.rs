//! What an import of zones says before anything is stored: which coordinate system the file
//! was read in, which zones are too narrow for the GPS tolerance to judge well, and whether the
//! file lies where the fleet runs at all. Pure, so that `hyfleet zones import`, the API and the
//! start-up import say the same things.

use super::gcj02::gcj02_to_wgs84;
use super::{Crs, GeoConfig, Zone, ZoneKind, at_margin_m, distance_m};

/// How far beyond the local GCJ-02 offset a zone may lie outside every service area before the
/// file is refused: room for a station or parking area drawn just past the urban boundary.
const PLACE_SLACK_M: f64 = 200.0;

/// One sentence saying which coordinate system a zone file is read in, and from which option.
pub fn crs_note(geo: &GeoConfig) -> String {
    let name = |c: Crs| match c {
        Crs::Wgs84 => "WGS-84",
        Crs::Gcj02 => "GCJ-02 (converted to WGS-84)",
    };
    match geo.zones_crs {
        Some(c) => format!("zone coordinates read as {} (geo.zones_crs)", name(c)),
        None => format!(
            "zone coordinates read as {} (geo.zones_crs is unset, so geo.crs applies)",
            name(geo.crs)
        ),
    }
}

/// A warning for each zone narrower than twice the GPS tolerance of a good fix, saying what
/// that does to the rule that reads it.
pub fn narrow_zones(zones: &[Zone], tolerance_m: f64) -> Vec<String> {
    let limit = 2.0 * tolerance_m;
    zones
        .iter()
        .filter(|z| z.kind != ZoneKind::Station && z.width_m < limit)
        .map(|z| {
            let consequence = match z.kind {
                ZoneKind::NoParking => format!(
                    "a ride end is judged at it when the fix is inside or within {:.1} m of it, \
                     so a fix that is a few metres off may miss a bike parked in it",
                    at_margin_m(z.width_m, tolerance_m)
                ),
                ZoneKind::Parking => format!(
                    "a ride end within {tolerance_m:.1} m of it counts as inside, so bikes left \
                     beside it are not told apart from bikes in it"
                ),
                ZoneKind::Slow => format!(
                    "no fix is ever {tolerance_m:.1} m inside it, so its speed cap is never applied"
                ),
                ZoneKind::ServiceArea | ZoneKind::Station => format!(
                    "no fix is ever {tolerance_m:.1} m inside it, so a vehicle in it is never surely inside"
                ),
            };
            format!(
                "zone `{}` ({}) is {:.1} m wide, under twice the GPS tolerance ({limit:.1} m): {consequence}",
                z.id,
                z.kind.as_str(),
                z.width_m
            )
        })
        .collect()
}

/// Where a zone is: the centre of its bounds.
fn centre(z: &Zone) -> (f64, f64) {
    let (la0, lo0, la1, lo1) = z.bounds();
    ((la0 + la1) / 2.0, (lo0 + lo1) / 2.0)
}

/// The size of the GCJ-02 offset at a place, in metres (0 outside China).
pub fn gcj02_offset_m(lat: f64, lon: f64) -> f64 {
    let (wlat, wlon) = gcj02_to_wgs84(lat, lon);
    distance_m(lat, lon, wlat, wlon)
}

/// What [`check_place`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Placement {
    /// Zones outside every service area by about the GCJ-02 offset: a hint, not a refusal.
    pub warnings: Vec<String>,
}

/// Refuse a file whose zones lie outside every service area by more than the GCJ-02 offset
/// could explain (positions as [lat, lon], another city, a wrong projection). The service
/// areas are those already stored (`known`), else the file's own. `Err` says which zone, how
/// far, and what to check.
pub fn check_place(zones: &[Zone], known: &[Zone], geo: &GeoConfig) -> Result<Placement, String> {
    let is_area = |z: &&Zone| z.kind == ZoneKind::ServiceArea;
    let mut areas: Vec<&Zone> = known.iter().filter(is_area).collect();
    if areas.is_empty() {
        areas = zones.iter().filter(is_area).collect();
    }
    if areas.is_empty() {
        return Ok(Placement::default());
    }
    let names = areas
        .iter()
        .map(|a| format!("`{}`", a.id))
        .collect::<Vec<_>>()
        .join(", ");
    let read_as = crs_note(geo);
    let other = match geo.zones_crs() {
        Crs::Wgs84 => "gcj02",
        Crs::Gcj02 => "wgs84",
    };
    let mut out = Placement::default();
    for z in zones.iter().filter(|z| z.kind != ZoneKind::ServiceArea) {
        let (lat, lon) = centre(z);
        let outside = areas
            .iter()
            .map(|a| a.signed_distance_m(lat, lon))
            .fold(f64::INFINITY, f64::min);
        if outside <= 0.0 {
            continue;
        }
        let offset = gcj02_offset_m(lat, lon);
        if outside > offset + PLACE_SLACK_M {
            return Err(format!(
                "zone `{}` lies {:.0} m outside every service area ({names}), farther than the \
                 GCJ-02 offset here ({offset:.0} m) can explain; {read_as}. Check that positions \
                 are [lon, lat] and that the file is of this city",
                z.id, outside
            ));
        }
        if outside > PLACE_SLACK_M / 4.0 {
            out.warnings.push(format!(
                "zone `{}` lies {outside:.0} m outside every service area ({names}), about the \
                 GCJ-02 offset here ({offset:.0} m); {read_as}: if the file was drawn in the \
                 other system, set geo.zones_crs = \"{other}\"",
                z.id
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::gcj02::wgs84_to_gcj02;
    use crate::geo::parse_zones;

    const SAMPLE: &str = include_str!("../../data/xiaoyi/zones.geojson");

    fn sample(crs: Crs) -> Vec<Zone> {
        parse_zones(SAMPLE, crs).unwrap()
    }

    /// The sample with every position moved by `f`, as a file drawn elsewhere would be.
    fn moved(f: impl Fn(f64, f64) -> (f64, f64)) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
        fn walk(v: &mut serde_json::Value, f: &dyn Fn(f64, f64) -> (f64, f64)) {
            match v {
                serde_json::Value::Array(a)
                    if a.len() == 2 && a.iter().all(serde_json::Value::is_f64) =>
                {
                    let (lat, lon) = f(a[1].as_f64().unwrap(), a[0].as_f64().unwrap());
                    *v = serde_json::json!([lon, lat]);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
                _ => {}
            }
        }
        for feature in doc["features"].as_array_mut().unwrap() {
            walk(&mut feature["geometry"]["coordinates"], &f);
        }
        doc.to_string()
    }

    #[test]
    fn the_sample_lies_inside_its_own_service_areas() {
        let zones = sample(Crs::Wgs84);
        let geo = GeoConfig::default();
        assert_eq!(check_place(&zones, &[], &geo), Ok(Placement::default()));
    }

    #[test]
    fn a_file_of_another_city_is_refused_and_says_where_and_in_which_system() {
        let known = sample(Crs::Wgs84);
        // The same fences 0.3° north (33 km): not an offset, a different place.
        let far = parse_zones(&moved(|lat, lon| (lat + 0.3, lon)), Crs::Wgs84).unwrap();
        let parking: Vec<Zone> = far
            .into_iter()
            .filter(|z| z.kind == ZoneKind::Parking)
            .collect();
        let err = check_place(&parking, &known, &GeoConfig::default()).unwrap_err();
        assert!(err.contains("zone `P01`"), "{err}");
        assert!(err.contains("outside every service area"), "{err}");
        assert!(err.contains("read as WGS-84"), "{err}");
    }

    #[test]
    fn fences_drawn_on_a_chinese_map_read_as_wgs84_are_flagged_not_refused() {
        let known = sample(Crs::Wgs84);
        // Moved by the GCJ-02 offset, as drawn on a Chinese map; read as if WGS-84.
        let text = moved(wgs84_to_gcj02);
        let shifted = parse_zones(&text, Crs::Wgs84).unwrap();
        let placed = check_place(&shifted, &known, &GeoConfig::default()).unwrap();
        // Most sample fences sit well inside the city: a few near its edge are pushed out.
        for w in &placed.warnings {
            assert!(w.contains("geo.zones_crs = \"gcj02\""), "{w}");
        }
        // Read as GCJ-02, they land back on the known fences.
        let back = parse_zones(&text, Crs::Gcj02).unwrap();
        let geo = GeoConfig {
            zones_crs: Some(Crs::Gcj02),
            ..GeoConfig::default()
        };
        assert_eq!(check_place(&back, &known, &geo), Ok(Placement::default()));
    }

    #[test]
    fn the_note_names_the_system_and_the_option_it_came_from() {
        let mut geo = GeoConfig::default();
        assert!(crs_note(&geo).contains("WGS-84 (geo.zones_crs is unset"));
        geo.crs = Crs::Gcj02;
        assert!(crs_note(&geo).contains("GCJ-02"));
        geo.zones_crs = Some(Crs::Wgs84);
        assert_eq!(
            crs_note(&geo),
            "zone coordinates read as WGS-84 (geo.zones_crs)"
        );
    }

    #[test]
    fn narrow_zones_are_named_with_what_they_cost() {
        let zones = sample(Crs::Wgs84);
        let w = narrow_zones(&zones, 10.0);
        let fire_lane = w.iter().find(|w| w.contains("`NP05`")).expect("NP05");
        assert!(
            fire_lane.contains("under twice the GPS tolerance (20.0 m)"),
            "{fire_lane}"
        );
        assert!(
            !w.iter()
                .any(|w| w.contains("`SA01`") || w.contains("`ST01`")),
            "{w:?}"
        );
    }
}
