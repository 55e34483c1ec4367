use super::*;
use crate::geo::metric::M_PER_DEG_LAT;

const LAT: f64 = 37.145;
const LON: f64 = 111.781;

fn m_lon(lat: f64) -> f64 {
    M_PER_DEG_LAT * lat.to_radians().cos()
}

/// A square `side_m` wide whose south-west corner is `east_m`/`north_m` from the centre.
fn square(id: &str, kind: &str, east_m: f64, north_m: f64, side_m: f64) -> Value {
    let (lat0, lon0) = (LAT + north_m / M_PER_DEG_LAT, LON + east_m / m_lon(LAT));
    let (dlat, dlon) = (side_m / M_PER_DEG_LAT, side_m / m_lon(LAT));
    serde_json::json!({
        "type": "Feature",
        "properties": {"id": id, "name": format!("zone {id}"), "kind": kind},
        "geometry": {"type": "Polygon", "coordinates": [[
            [lon0, lat0], [lon0 + dlon, lat0], [lon0 + dlon, lat0 + dlat],
            [lon0, lat0 + dlat], [lon0, lat0]
        ]]}
    })
}

fn collection(features: Vec<Value>) -> String {
    serde_json::json!({"type": "FeatureCollection", "features": features}).to_string()
}

/// `(lat, lon)` of a point `east_m`/`north_m` from the centre.
fn at(east_m: f64, north_m: f64) -> (f64, f64) {
    (LAT + north_m / M_PER_DEG_LAT, LON + east_m / m_lon(LAT))
}

#[test]
fn signed_distance_is_negative_inside_and_metric_outside() {
    let idx = ZoneIndex::from_geojson(
        &collection(vec![square("P1", "parking", 0.0, 0.0, 100.0)]),
        Crs::Wgs84,
    )
    .unwrap();
    let z = idx.get("P1").unwrap();
    let (la, lo) = at(50.0, 50.0);
    assert!((z.signed_distance_m(la, lo) + 50.0).abs() < 0.5);
    let (la, lo) = at(103.0, 50.0);
    assert!((z.signed_distance_m(la, lo) - 3.0).abs() < 0.2);
    let (la, lo) = at(50.0, -40.0);
    assert!((z.signed_distance_m(la, lo) - 40.0).abs() < 0.2);
    let (la, lo) = at(-30.0, -40.0);
    assert!(
        (z.signed_distance_m(la, lo) - 50.0).abs() < 0.3,
        "corner: 3-4-5"
    );
}

#[test]
fn holes_are_outside() {
    let mut f = square("P1", "parking", 0.0, 0.0, 100.0);
    let hole = square("h", "parking", 40.0, 40.0, 20.0);
    let ring = hole["geometry"]["coordinates"][0].clone();
    f["geometry"]["coordinates"]
        .as_array_mut()
        .unwrap()
        .push(ring);
    let idx = ZoneIndex::from_geojson(&collection(vec![f]), Crs::Wgs84).unwrap();
    let (la, lo) = at(50.0, 50.0);
    let d = idx.get("P1").unwrap().signed_distance_m(la, lo);
    assert!((d - 10.0).abs() < 0.3, "{d}");
    let (la, lo) = at(20.0, 50.0);
    assert!(idx.get("P1").unwrap().signed_distance_m(la, lo) < -19.0);
}

#[test]
fn points_with_a_radius_are_circles() {
    let text = collection(vec![serde_json::json!({
        "type": "Feature",
        "properties": {"id": "S1", "name": "Energy island 1", "kind": "station", "radius_m": 25},
        "geometry": {"type": "Point", "coordinates": [LON, LAT]}
    })]);
    let idx = ZoneIndex::from_geojson(&text, Crs::Wgs84).unwrap();
    let (la, lo) = at(0.0, 20.0);
    assert!(idx.near(la, lo, 0.0).iter().any(|h| h.zone.id == "S1"));
    let (la, lo) = at(0.0, 125.0);
    let (z, d) = idx.nearest_station(la, lo).unwrap();
    assert_eq!(z.id, "S1");
    assert!((d - 100.0).abs() < 0.5, "{d}");
}

#[test]
fn nearest_parking_names_the_closest_area_and_its_distance() {
    let idx = ZoneIndex::from_geojson(
        &collection(vec![
            square("far", "parking", 500.0, 0.0, 50.0),
            square("near", "parking", 0.0, 0.0, 50.0),
            square("np", "no_parking", 60.0, 0.0, 50.0),
        ]),
        Crs::Wgs84,
    )
    .unwrap();
    let (la, lo) = at(90.0, 25.0);
    let (z, d) = idx.nearest_parking(la, lo).unwrap();
    assert_eq!(z.id, "near", "a no-parking zone is not a parking area");
    assert!((d - 40.0).abs() < 0.3, "{d}");
    let (la, lo) = at(10.0, 10.0);
    assert_eq!(idx.nearest_parking(la, lo).unwrap().1, 0.0);
}

#[test]
fn near_includes_zones_within_the_margin_only() {
    let idx = ZoneIndex::from_geojson(
        &collection(vec![square("P1", "parking", 0.0, 0.0, 100.0)]),
        Crs::Wgs84,
    )
    .unwrap();
    let (la, lo) = at(103.0, 50.0);
    assert_eq!(idx.near(la, lo, 10.0).len(), 1);
    assert!(idx.near(la, lo, 2.0).is_empty());
    let (la, lo) = at(140.0, 50.0);
    assert!(idx.near(la, lo, 10.0).is_empty());
}

#[test]
fn gcj02_zones_are_converted_to_wgs84() {
    // A fence drawn on a Chinese map around a point, and a vehicle reporting WGS-84 there.
    let (glat, glon) = crate::geo::gcj02::wgs84_to_gcj02(LAT, LON);
    let text = collection(vec![serde_json::json!({
        "type": "Feature",
        "properties": {"id": "P1", "kind": "parking", "radius_m": 30},
        "geometry": {"type": "Point", "coordinates": [glon, glat]}
    })]);
    let wgs = ZoneIndex::from_geojson(&text, Crs::Gcj02).unwrap();
    assert!(wgs.get("P1").unwrap().signed_distance_m(LAT, LON) < -25.0);
    // Read as WGS-84, the same fence sits hundreds of metres away.
    let raw = ZoneIndex::from_geojson(&text, Crs::Wgs84).unwrap();
    assert!(raw.get("P1").unwrap().signed_distance_m(LAT, LON) > 100.0);
}

#[test]
fn bad_features_are_refused_with_their_place() {
    let mut bad = square("P1", "parking", 0.0, 0.0, 10.0);
    bad["properties"]["kind"] = "garage".into();
    let err = parse_zones(
        &collection(vec![square("ok", "parking", 0.0, 0.0, 10.0), bad]),
        Crs::Wgs84,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("features[1].properties.kind"),
        "{err}"
    );
    let slow = square("S", "slow", 0.0, 0.0, 10.0);
    let err = parse_zones(&collection(vec![slow]), Crs::Wgs84).unwrap_err();
    assert!(err.to_string().contains("max_speed_kmh"), "{err}");
    let dup = collection(vec![
        square("A", "parking", 0.0, 0.0, 10.0),
        square("A", "parking", 50.0, 0.0, 10.0),
    ]);
    assert!(
        parse_zones(&dup, Crs::Wgs84)
            .unwrap_err()
            .to_string()
            .contains("earlier feature")
    );
    assert!(matches!(
        parse_zones("{", Crs::Wgs84),
        Err(ZoneError::Json(_))
    ));
}

#[test]
fn features_round_trip_through_geojson() {
    let idx = ZoneIndex::from_geojson(
        &collection(vec![square("P1", "parking", 0.0, 0.0, 100.0)]),
        Crs::Wgs84,
    )
    .unwrap();
    let f = idx.get("P1").unwrap().to_feature();
    let again = parse_feature(&f, Crs::Wgs84).unwrap();
    assert_eq!(&again, idx.get("P1").unwrap());
}

#[test]
fn lookups_among_thousands_of_zones_find_the_right_one() {
    // A 50 x 40 grid of 30 m parking squares 60 m apart: 2,000 zones, each point looked up
    // through the R-tree must land in its own square and nowhere else.
    let mut features = Vec::new();
    for i in 0..50 {
        for j in 0..40 {
            features.push(square(
                &format!("P{i}-{j}"),
                "parking",
                i as f64 * 60.0,
                j as f64 * 60.0,
                30.0,
            ));
        }
    }
    let idx = ZoneIndex::from_geojson(&collection(features), Crs::Wgs84).unwrap();
    assert_eq!(idx.len(), 2_000);
    for k in 0..2_000 {
        let (i, j) = (k % 50, k / 50);
        let (la, lo) = at(i as f64 * 60.0 + 15.0, j as f64 * 60.0 + 15.0);
        let hits = idx.near(la, lo, 10.0);
        assert_eq!(hits.len(), 1, "point {k}");
        assert_eq!(hits[0].zone.id, format!("P{i}-{j}"));
        let (z, d) = idx.nearest_parking(la, lo).unwrap();
        assert_eq!((z.id.as_str(), d), (hits[0].zone.id.as_str(), 0.0));
    }
}
