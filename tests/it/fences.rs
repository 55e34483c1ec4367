//! Fences as a real operator meets them, through MQTT, the rules and PostgreSQL, on the Xiaoyi
//! sample zones: a fire lane narrower than GPS error, a poor fix next to a parking area,
//! readings without a usable fix, and zones that bind only some kinds of vehicle.

use chrono::{DateTime, Duration, SubsecRound as _, Utc};
use serde_json::{Value, json};

use crate::support::*;

/// Metres per degree of latitude, and of longitude at Xiaoyi.
const M_LAT: f64 = 111_195.0;
fn m_lon(lat: f64) -> f64 {
    M_LAT * lat.to_radians().cos()
}

struct Site {
    svc: InProcess,
    db: TestDb,
    client: tokio_postgres::Client,
    fw: Publisher,
    root: String,
    t0: DateTime<Utc>,
}

impl Site {
    /// The service on an empty database: it loads the Xiaoyi sample zones itself.
    async fn start() -> Site {
        let db = TestDb::new().await;
        let c = config(&db, &BROKER);
        let root = c.mqtt.topic_root.clone();
        let svc = InProcess::start(c).await;
        let client = db.client().await;
        Site {
            svc,
            client,
            db,
            fw: Publisher::connect(&BROKER).await,
            root,
            t0: (Utc::now() - Duration::minutes(30)).trunc_subsecs(0),
        }
    }

    /// Publish readings one message each, in order, and wait until all are stored.
    async fn send(&mut self, kind: &str, id: &str, readings: &[Value]) {
        let before = self.stored(id).await;
        for r in readings {
            self.fw
                .publish(
                    &format!("{}/{kind}/{id}/telemetry", self.root),
                    r.to_string(),
                )
                .await;
        }
        self.fw.flush().await;
        let want = before + readings.len() as i64;
        let what = format!("{want} readings of {id} stored");
        eventually(30, &what, || async {
            (self.stored(id).await >= want).then_some(())
        })
        .await;
    }

    async fn stored(&self, id: &str) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM telemetry t JOIN vehicles v ON v.id = t.vehicle \
                 WHERE v.code = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `(rule, zone, details)` of every alert of the vehicle, oldest first.
    async fn alerts(&self, id: &str) -> Vec<(String, Option<String>, Value)> {
        self.client
            .query(
                "SELECT a.rule, a.zone, a.details FROM alerts a JOIN vehicles v \
                 ON v.id = a.vehicle_id WHERE v.code = $1 ORDER BY a.id",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    async fn api(&self, path: &str) -> Value {
        let r = get(&self.svc.url(path)).await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    fn at(&self, secs: i64) -> String {
        (self.t0 + Duration::seconds(secs)).to_rfc3339()
    }

    /// A ride from 150 m west of `(lat, lon)`, 30 m every 10 s, locked at `(lat, lon)` with
    /// `hdop` at `start + 60` s.
    fn ride_to(&self, start: i64, (lat, lon): (f64, f64), hdop: f64) -> Vec<Value> {
        let mut out: Vec<Value> = (0..5)
            .map(|i| {
                let west = 150.0 - 30.0 * i as f64;
                json!({"ts": self.at(start + 10 * i), "lat": lat,
                       "lon": lon - west / m_lon(lat), "hdop": 0.9, "speed_kmh": 10.8,
                       "h2_g": 40.0, "locked": false})
            })
            .collect();
        out.push(
            json!({"ts": self.at(start + 60), "lat": lat, "lon": lon, "hdop": hdop,
                        "speed_kmh": 0.0, "h2_g": 40.0, "locked": true}),
        );
        out
    }

    async fn stop(self) {
        self.svc.stop().await;
        drop(self.db);
    }
}

fn parking_violations(
    alerts: &[(String, Option<String>, Value)],
) -> Vec<&(String, Option<String>, Value)> {
    alerts
        .iter()
        .filter(|a| a.0 == "parking_violation")
        .collect()
}

/// `NP05`: a 5 m fire lane across the People's Square bike parking (`P26`).
const FIRE_LANE: (f64, f64) = (37.15039, 111.782_690_5);
/// The middle of `NP03`, the 20 m fire lane across the east end of `P01`: 10 m from its edges.
const NP03_MIDDLE: (f64, f64) = (37.146_616_5, 111.781_958);

#[tokio::test]
async fn a_ride_ending_in_a_5_m_fire_lane_across_a_parking_area_is_a_violation_naming_the_lane() {
    let mut site = Site::start().await;
    let ride = site.ride_to(0, FIRE_LANE, 0.9);
    site.send("bike", "XY-B0101", &ride).await;
    let alerts = site.alerts("XY-B0101").await;
    let v = parking_violations(&alerts);
    assert_eq!(v.len(), 1, "{alerts:?}");
    assert_eq!(v[0].1.as_deref(), Some("NP05"), "the alert is the lane's");
    assert_eq!(v[0].2["no_parking_zone"], "NP05");
    assert!(
        v[0].2["no_parking_zone_name"]
            .as_str()
            .unwrap()
            .contains("fire lane")
    );
    let ended_in_parking: bool = site
        .client
        .query_one(
            "SELECT r.ended_in_parking FROM rides r JOIN vehicles v ON v.id = r.vehicle_id \
             WHERE v.code = 'XY-B0101'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !ended_in_parking,
        "a ride ending in the lane did not end in parking"
    );
    site.stop().await;
}

#[tokio::test]
async fn the_sample_fire_lane_np03_fires_with_an_ordinary_fix() {
    let mut site = Site::start().await;
    // hdop 1.2: a tolerance of 11 m, deeper than the middle of a 20 m lane.
    let ride = site.ride_to(0, NP03_MIDDLE, 1.2);
    site.send("bike", "XY-B0102", &ride).await;
    let alerts = site.alerts("XY-B0102").await;
    let v = parking_violations(&alerts);
    assert_eq!(v.len(), 1, "{alerts:?}");
    assert_eq!(v[0].1.as_deref(), Some("NP03"));
    site.stop().await;
}

#[tokio::test]
async fn a_ride_ending_18_m_outside_a_parking_area_with_a_poor_fix_is_a_violation_naming_it() {
    let mut site = Site::start().await;
    // 18 m north of P01's north edge, in open ground (NP03 is 30 m to the east). hdop 4 asks
    // for 25 m of tolerance, capped at rules.max_gps_tolerance_m = 15.
    let end = (37.146_797 + 18.0 / M_LAT, 111.7815);
    let ride = site.ride_to(0, end, 4.0);
    site.send("bike", "XY-B0103", &ride).await;
    let alerts = site.alerts("XY-B0103").await;
    let v = parking_violations(&alerts);
    assert_eq!(v.len(), 1, "{alerts:?}");
    assert_eq!(v[0].1, None, "open ground: no zone of its own");
    assert_eq!(v[0].2["nearest_zone"], "P01");
    let d = v[0].2["distance_m"].as_f64().unwrap();
    assert!((d - 18.0).abs() < 1.0, "{d}");
    assert_eq!(v[0].2["tolerance_m"], json!(15.0));
    site.stop().await;
}

#[tokio::test]
async fn a_bike_parked_inside_with_poor_and_worthless_fixes_raises_nothing() {
    let mut site = Site::start().await;
    let parked = (37.146_62, 111.7816); // inside P01, west of NP03
    let mut readings = site.ride_to(0, parked, 0.9);
    // Parked for ten minutes: fixes wander 20 m with hdop 7, the module loses its fix ((0, 0),
    // `"fix": false` with a stale position in Jiexiu) and finds one with hdop 15.
    let (la, lo) = parked;
    for i in 0..20i64 {
        let ts = site.at(70 + 30 * i);
        let r = match i % 5 {
            0 | 1 => {
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                json!({"ts": ts, "lat": la + s * 20.0 / M_LAT, "lon": lo, "hdop": 7.0})
            }
            2 => json!({"ts": ts, "lat": 0.0, "lon": 0.0}),
            3 => json!({"ts": ts, "lat": 37.027, "lon": 111.913, "fix": false}),
            _ => json!({"ts": ts, "lat": la + 400.0 / M_LAT, "lon": lo, "hdop": 15.0}),
        };
        let mut r = r;
        r["speed_kmh"] = json!(0.0);
        r["h2_g"] = json!(40.0);
        r["locked"] = json!(true);
        readings.push(r);
    }
    site.send("bike", "XY-B0104", &readings).await;
    let alerts = site.alerts("XY-B0104").await;
    assert!(alerts.is_empty(), "no alert at all: {alerts:?}");
    let v = site.api("/api/v1/vehicles/XY-B0104").await;
    let (lat, lon) = (v["lat"].as_f64().unwrap(), v["lon"].as_f64().unwrap());
    assert!(
        ((lat - la) * M_LAT).abs() < 25.0 && ((lon - lo) * m_lon(la)).abs() < 25.0,
        "still at its parking place: {v}"
    );
    site.stop().await;
}

#[tokio::test]
async fn readings_without_a_fix_are_stored_but_move_nothing_and_end_no_ride_at_sea() {
    let mut site = Site::start().await;
    let last_good = (37.146_62, 111.7816); // inside P01
    let mut readings = site.ride_to(0, last_good, 0.9);
    readings.pop(); // not locked yet: riding into P01 ...
    let (la, lo) = last_good;
    readings.push(json!({"ts": site.at(50), "lat": la, "lon": lo, "hdop": 0.9,
                         "speed_kmh": 3.0, "h2_g": 40.0, "locked": false}));
    // ... where the module loses its fix: (0, 0) twice, a stale position flagged invalid,
    // then the lock reported at (0, 0).
    for (s, lat, lon, fix) in [
        (60, 0.0, 0.0, None),
        (70, 0.0, 0.0, None),
        (80, 37.027, 111.913, Some(false)),
    ] {
        let mut r = json!({"ts": site.at(s), "lat": lat, "lon": lon, "speed_kmh": 0.0,
                           "h2_g": 40.0, "locked": false});
        if let Some(f) = fix {
            r["fix"] = json!(f);
        }
        readings.push(r);
    }
    readings.push(
        json!({"ts": site.at(90), "lat": 0.0, "lon": 0.0, "speed_kmh": 0.0,
                         "h2_g": 40.0, "locked": true}),
    );
    site.send("bike", "XY-B0105", &readings).await;
    assert_eq!(site.stored("XY-B0105").await, 10, "every reading is stored");

    let alerts = site.alerts("XY-B0105").await;
    assert!(alerts.is_empty(), "{alerts:?}");
    let ride = site
        .client
        .query_one(
            "SELECT r.end_lat, r.end_lon, r.ended_in_parking, r.distance_km FROM rides r \
             JOIN vehicles v ON v.id = r.vehicle_id WHERE v.code = 'XY-B0105'",
            &[],
        )
        .await
        .unwrap();
    let (end_lat, end_lon): (f64, f64) = (ride.get(0), ride.get(1));
    assert!(
        ((end_lat - la) * M_LAT).abs() < 1.0 && ((end_lon - lo) * m_lon(la)).abs() < 1.0,
        "the ride ends at the last good fix, not at sea: {end_lat}, {end_lon}"
    );
    assert!(ride.get::<_, bool>(2), "ended in P01");
    assert!(ride.get::<_, f64>(3) < 0.2, "no km to the sea and back");

    let v = site.api("/api/v1/vehicles/XY-B0105").await;
    assert!((v["lat"].as_f64().unwrap() - la).abs() < 1e-6, "{v}");
    assert!((v["lon"].as_f64().unwrap() - lo).abs() < 1e-6, "{v}");
    let last_fix: DateTime<Utc> = serde_json::from_value(v["last_fix"].clone()).unwrap();
    let last_ts: DateTime<Utc> = serde_json::from_value(v["last_ts"].clone()).unwrap();
    assert_eq!(last_fix, site.t0 + Duration::seconds(50));
    assert_eq!(last_ts, site.t0 + Duration::seconds(90));
    assert_eq!(v["locked"], true, "the lock itself is real");

    let from = site.at(-1).replace('+', "%2B");
    let to = site.at(100).replace('+', "%2B");
    let track = site
        .api(&format!(
            "/api/v1/vehicles/XY-B0105/track?from={from}&to={to}"
        ))
        .await;
    assert_eq!(track["properties"]["points"], 6, "{track}");
    for p in track["geometry"]["coordinates"].as_array().unwrap() {
        assert!((p[1].as_f64().unwrap() - la).abs() < 0.01, "{p}");
    }
    site.stop().await;
}

#[tokio::test]
async fn the_bus_corridor_is_a_service_area_for_buses_not_for_bikes() {
    let mut site = Site::start().await;
    // On the Xiaoyi–Jiexiu road, 6 km out of town: inside SA02 (buses), outside SA01.
    let (lat, lon) = (37.089_305, 111.842_983);
    let moving = |kind_speed: f64, i: i64| {
        json!({"ts": site.at(30 * i), "lat": lat + i as f64 * 20.0 / M_LAT, "lon": lon,
               "hdop": 0.8, "speed_kmh": kind_speed, "h2_g": 40.0, "locked": false})
    };
    let bike: Vec<Value> = (0..10).map(|i| moving(8.0, i)).collect();
    let bus: Vec<Value> = (0..10)
        .map(|i| {
            let mut r = moving(8.0, i);
            r["h2_g"] = json!(20_000.0);
            r.as_object_mut().unwrap().remove("locked");
            r
        })
        .collect();
    site.send("bike", "XY-B0106", &bike).await;
    site.send("bus", "XY-H0106", &bus).await;
    let of = |a: &[(String, Option<String>, Value)]| {
        a.iter().filter(|a| a.0 == "out_of_service_area").count()
    };
    assert_eq!(
        of(&site.alerts("XY-B0106").await),
        1,
        "a bike on the intercity road"
    );
    assert_eq!(of(&site.alerts("XY-H0106").await), 0, "a bus on its line");
    let sa02 = site.api("/api/v1/zones/SA02").await;
    assert_eq!(sa02["properties"]["kinds"], json!(["bus"]));
    let kinds: Option<Vec<String>> = site
        .client
        .query_one("SELECT kinds FROM zones WHERE id = 'SA02'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kinds, Some(vec!["bus".to_owned()]));
    site.stop().await;
}

/// The sample with every position moved by `f`: a file drawn elsewhere, or on another datum.
fn sample_moved(f: impl Fn(f64, f64) -> (f64, f64)) -> String {
    fn walk(v: &mut Value, f: &dyn Fn(f64, f64) -> (f64, f64)) {
        match v {
            Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_f64) => {
                let (lat, lon) = f(a[1].as_f64().unwrap(), a[0].as_f64().unwrap());
                *v = json!([lon, lat]);
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let mut doc: Value = serde_json::from_str(hyfleet::sample::ZONES_GEOJSON).unwrap();
    for feature in doc["features"].as_array_mut().unwrap() {
        walk(&mut feature["geometry"]["coordinates"], &f);
    }
    doc.to_string()
}

#[tokio::test]
async fn zones_import_names_its_coordinate_system_and_refuses_a_file_of_another_place() {
    let db = TestDb::new().await;
    let dir = temp_dir();
    let import = |file: &std::path::Path, zones_crs: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hyfleet"));
        cmd.args(["zones", "import", file.to_str().unwrap()])
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .env_remove("HYFLEET_CONFIG")
            .env_remove("HYFLEET_GEO__CRS")
            .env_remove("HYFLEET_GEO__ZONES_CRS");
        if let Some(c) = zones_crs {
            cmd.env("HYFLEET_GEO__ZONES_CRS", c);
        }
        let out = cmd.output().expect("run hyfleet zones import");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let p01 = |client: tokio_postgres::Client| async move {
        let g: Value = client
            .query_one("SELECT geometry FROM zones WHERE id = 'P01'", &[])
            .await
            .unwrap()
            .get(0);
        let c = &g["coordinates"][0][0];
        (c[1].as_f64().unwrap(), c[0].as_f64().unwrap())
    };

    let sample = dir.join("xiaoyi.geojson");
    std::fs::write(&sample, hyfleet::sample::ZONES_GEOJSON).unwrap();
    let (ok, stdout, stderr) = import(&sample, None);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("read as WGS-84 (geo.zones_crs is unset"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: zone `NP05` (no_parking) is 5."),
        "{stderr}"
    );
    let original = p01(db.client().await).await;

    // The same fences 0.3° (33 km) north: a file of another place, not an offset.
    let far = dir.join("far.geojson");
    std::fs::write(&far, sample_moved(|lat, lon| (lat + 0.3, lon))).unwrap();
    let (ok, stdout, stderr) = import(&far, None);
    assert!(!ok, "refused: {stdout}");
    assert!(stderr.contains("outside every service area"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(
        p01(db.client().await).await,
        original,
        "nothing was imported"
    );

    // Drawn on a Chinese map and imported as such: back on the WGS-84 fences.
    let gcj = dir.join("gcj02.geojson");
    std::fs::write(&gcj, sample_moved(hyfleet::geo::gcj02::wgs84_to_gcj02)).unwrap();
    let (ok, stdout, stderr) = import(&gcj, Some("gcj02"));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("GCJ-02 (converted to WGS-84) (geo.zones_crs)"),
        "{stdout}"
    );
    let (lat, lon) = p01(db.client().await).await;
    assert!((lat - original.0).abs() < 1e-6 && (lon - original.1).abs() < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_narrow_zone_put_through_the_api_is_stored_with_a_warning_and_its_kinds() {
    let site = Site::start().await;
    // A 4 m fire lane across P01, for bikes.
    let (lat0, lat1) = (37.1464, 37.1468);
    let (lon0, lon1) = (111.7816, 111.7816 + 4.0 / m_lon(37.1466));
    let lane = json!({"type": "Feature", "properties": {"name": "P01 west fire lane",
        "kind": "no_parking", "kinds": ["bike"]}, "geometry": {"type": "Polygon",
        "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}});
    let r = reqwest::Client::new()
        .put(site.svc.url("/api/v1/zones/NP90"))
        .bearer_auth(TOKEN)
        .json(&lane)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("zone `NP90` (no_parking) is 4."),
        "{body}"
    );
    assert_eq!(body["properties"]["kinds"], json!(["bike"]));
    let back = site.api("/api/v1/zones/NP90").await;
    assert_eq!(back["properties"]["kinds"], json!(["bike"]));
    // Kinds that are not vehicle kinds are refused.
    let mut bad = lane.clone();
    bad["properties"]["kinds"] = json!(["tram"]);
    let r = reqwest::Client::new()
        .put(site.svc.url("/api/v1/zones/NP91"))
        .bearer_auth(TOKEN)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("properties.kinds"),
        "{problem}"
    );
    site.stop().await;
}
