//! The public GBFS feeds against a real database, validated with the official GBFS v3.0
//! schemas (tests/gbfs/validate.py).

use std::process::Command;

use hyfleet::geo::Crs;
use serde_json::Value;

use crate::support::{BROKER, InProcess, TestDb, config};

/// A vehicle row as ingest would leave it.
pub async fn seed_vehicle(
    db: &tokio_postgres::Client,
    code: &str,
    kind: &str,
    (lat, lon): (f64, f64),
    h2_g: f32,
    locked: bool,
    online: bool,
) {
    let (tank, cap, kpg) = if kind == "bus" {
        (25_000.0f32, 80.0f32, 0.014f32)
    } else {
        (50.0, 23.0, 1.2)
    };
    db.execute(
        "INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g, last_ts, last_seen, \
         lat, lon, speed_kmh, h2_g, range_km, locked, online) \
         VALUES ($1, $2, $3, $4, $5, now() - interval '30 s', now() - interval '30 s', \
         $6, $7, $8, $9, $10, $11, $12)",
        &[
            &code,
            &kind,
            &tank,
            &cap,
            &kpg,
            &lat,
            &lon,
            &(if locked { 0.0f32 } else { 15.0f32 }),
            &h2_g,
            &(h2_g * kpg),
            &locked,
            &online,
        ],
    )
    .await
    .unwrap();
}

async fn get(url: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let r = reqwest::get(url).await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn vehicle_at(feed: &Value, lat: f64) -> Value {
    feed["data"]["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| (v["lat"].as_f64().unwrap() - lat).abs() < 1e-7)
        .cloned()
        .unwrap_or_else(|| panic!("no vehicle at {lat} in {feed}"))
}

#[tokio::test]
async fn gbfs_feeds_publish_the_fleet_rotate_ids_and_validate_against_the_official_schemas() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let zones = hyfleet::store::zones::import(&client, hyfleet::sample::ZONES_GEOJSON, Crs::Wgs84)
        .await
        .unwrap();
    seed_vehicle(
        &client,
        "XY-B0001",
        "bike",
        (37.1461, 111.7815),
        40.0,
        true,
        true,
    )
    .await;
    seed_vehicle(
        &client,
        "XY-B0002",
        "bike",
        (37.1500, 111.7800),
        30.0,
        false,
        true,
    )
    .await;
    seed_vehicle(
        &client,
        "XY-B0003",
        "bike",
        (37.1402, 111.7702),
        4.0,
        true,
        false,
    )
    .await;
    seed_vehicle(
        &client,
        "XY-H0001",
        "bus",
        (37.1300, 111.8000),
        20_000.0,
        false,
        true,
    )
    .await;
    // Parked in People's Square (P26), and in the fire lane across it (NP05).
    seed_vehicle(
        &client,
        "XY-B0004",
        "bike",
        (37.1504, 111.7825),
        40.0,
        true,
        true,
    )
    .await;
    seed_vehicle(
        &client,
        "XY-B0005",
        "bike",
        (37.1504, 111.7826905),
        40.0,
        true,
        true,
    )
    .await;
    let svc = InProcess::start(config(&db, &BROKER)).await;

    // Discovery: every feed, at an absolute URL of this server, reachable without a token.
    let (status, headers, gbfs) = get(&svc.url("/gbfs/gbfs.json")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(gbfs["version"], "3.0");
    let feeds = gbfs["data"]["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 6);
    for f in feeds {
        let url = f["url"].as_str().unwrap();
        assert!(url.starts_with(&svc.url("/gbfs/")), "{url}");
        let (status, _, body) = get(url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(body["version"], "3.0", "{url}");
    }

    // Vehicles: parked bikes only, fleet ids never shown, fuel as a fraction.
    let (_, _, status_feed) = get(&svc.url("/gbfs/vehicle_status.json")).await;
    let vehicles = status_feed["data"]["vehicles"].as_array().unwrap();
    assert_eq!(vehicles.len(), 4, "{status_feed}");
    assert!(!status_feed.to_string().contains("XY-"));
    let b1 = vehicle_at(&status_feed, 37.1461);
    assert_eq!(b1["current_fuel_percent"], serde_json::json!(0.8));
    assert_eq!(b1["current_range_meters"], serde_json::json!(48000.0));
    assert_eq!(b1["is_disabled"], false);
    let b3 = vehicle_at(&status_feed, 37.1402);
    assert_eq!(b3["is_disabled"], true, "an offline bike cannot be rented");

    let (_, _, stations) = get(&svc.url("/gbfs/station_information.json")).await;
    let parking = hyfleet::sample::ZONES_GEOJSON
        .matches("\"kind\": \"parking\"")
        .count();
    assert_eq!(
        stations["data"]["stations"].as_array().unwrap().len(),
        parking
    );
    // Every station has a status; bikes parked in an area count, one in the lane does not.
    let (_, _, status) = get(&svc.url("/gbfs/station_status.json")).await;
    let statuses = status["data"]["stations"].as_array().unwrap();
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v["data"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["station_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&status, "stations"), ids(&stations, "stations"));
    let p26 = statuses.iter().find(|s| s["station_id"] == "P26").unwrap();
    assert_eq!(p26["num_vehicles_available"], 1, "{p26}");
    assert_eq!(
        p26["vehicle_types_available"],
        serde_json::json!([{"vehicle_type_id": "bike", "count": 1}])
    );
    assert!(p26.get("num_docks_available").is_none());
    let parked: i64 = statuses
        .iter()
        .map(|s| s["num_vehicles_available"].as_i64().unwrap())
        .sum();
    assert_eq!(parked, 1, "only B0004 is parked inside a station area");
    let in_station: Vec<&Value> = vehicles
        .iter()
        .filter(|v| v.get("station_id").is_some())
        .collect();
    assert_eq!(in_station.len(), 1);
    assert_eq!(in_station[0]["station_id"], "P26");
    no_station_area_overlaps_a_no_parking_zone(&stations, &client).await;

    let (_, _, fences) = get(&svc.url("/gbfs/geofencing_zones")).await;
    let features = fences["data"]["geofencing_zones"]["features"]
        .as_array()
        .unwrap();
    let stations_count = hyfleet::sample::ZONES_GEOJSON
        .matches("\"kind\": \"station\"")
        .count();
    assert_eq!(features.len(), zones - stations_count);
    assert_eq!(
        fences["data"]["global_rules"][0]["ride_through_allowed"],
        false
    );
    let (_, _, types) = get(&svc.url("/gbfs/vehicle_types.json")).await;
    assert_eq!(
        types["data"]["vehicle_types"][0]["propulsion_type"],
        "hydrogen_fuel_cell"
    );
    let (status, _, _) = get(&svc.url("/gbfs/free_bike_status.json")).await;
    assert_eq!(status, 404);

    // A ride ends: that bike gets a new id, the others keep theirs.
    client
        .execute(
            "INSERT INTO rides (vehicle_id, started_at, ended_at, distance_km, h2_used_g, \
             ended_in_parking) SELECT id, now() - interval '10 min', now(), 1.5, 1.2, true \
             FROM vehicles WHERE code = 'XY-B0001'",
            &[],
        )
        .await
        .unwrap();
    let (_, _, after) = get(&svc.url("/gbfs/vehicle_status.json")).await;
    assert_ne!(vehicle_at(&after, 37.1461)["vehicle_id"], b1["vehicle_id"]);
    assert_eq!(vehicle_at(&after, 37.1402)["vehicle_id"], b3["vehicle_id"]);

    // The validator fetches from this test's own runtime: run it off the runtime's thread.
    let url = svc.url("/gbfs/gbfs.json");
    tokio::task::spawn_blocking(move || validate(&url))
        .await
        .unwrap();
    svc.stop().await;
}

/// Run the official schemas over the live feed; every feed must exist and have no error.
fn validate(url: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gbfs/validate.py");
    let out = Command::new("python3")
        .args([script, url])
        .output()
        .expect("python3 is needed to validate the GBFS feeds");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "{stderr}\nInstall the validator: python3 -m pip install gbfs-validator==0.1.0"
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("validator output is not JSON ({e}):\n{stdout}\n{stderr}"));
    for file in [
        "gbfs.json",
        "system_information.json",
        "vehicle_types.json",
        "vehicle_status.json",
        "station_information.json",
        "station_status.json",
        "geofencing_zones.json",
    ] {
        let f = &report["files"][file];
        assert_eq!(f["exists"], true, "{file} not checked: {report:#}");
        assert_eq!(f["errors"], serde_json::json!([]), "{file}: {report:#}");
    }
    assert!(out.status.success(), "{report:#}\n{stderr}");
}

/// The cross-file rule the validator does not check: GBFS lets a station area win over the
/// geofencing rules, so no station area may overlap a no-parking zone that binds bikes.
async fn no_station_area_overlaps_a_no_parking_zone(
    stations: &Value,
    client: &tokio_postgres::Client,
) {
    use geo::{Area as _, BooleanOps as _};
    let to_geo = |mp: &Value| -> geo::MultiPolygon<f64> {
        let polys = mp["coordinates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let rings: Vec<geo::LineString<f64>> = p
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap()))
                            .collect()
                    })
                    .collect();
                geo::Polygon::new(rings[0].clone(), rings[1..].to_vec())
            })
            .collect::<Vec<_>>();
        geo::MultiPolygon::new(polys)
    };
    let rows = client
        .query(
            "SELECT id, geometry FROM zones WHERE kind = 'no_parking' \
             AND (kinds IS NULL OR 'bike' = ANY(kinds))",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.len() >= 2,
        "the sample has no-parking zones inside parking areas"
    );
    let parking: Vec<geo::MultiPolygon<f64>> = client
        .query("SELECT geometry FROM zones WHERE kind = 'parking'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let g: Value = r.get(0);
            to_geo(&serde_json::json!({"coordinates": [g["coordinates"]]}))
        })
        .collect();
    let mut overlapping = 0;
    for row in &rows {
        let np_id: String = row.get(0);
        let g: Value = row.get(1);
        let np = to_geo(&serde_json::json!({"coordinates": [g["coordinates"]]}));
        for st in stations["data"]["stations"].as_array().unwrap() {
            let area = to_geo(&st["station_area"]);
            // In square degrees: 1e-12 is about 0.01 m², rounding at the shared edge.
            let shared = area.intersection(&np).unsigned_area();
            assert!(
                shared < 1e-12,
                "station {} overlaps no-parking zone {np_id} by {shared} deg²",
                st["station_id"]
            );
        }
        // The check is not vacuous: the areas as drawn do overlap these zones.
        overlapping += parking
            .iter()
            .filter(|p| p.intersection(&np).unsigned_area() > 1e-10)
            .count();
    }
    assert!(
        overlapping >= 2,
        "NP03 and NP05 lie across parking areas as drawn"
    );
}
