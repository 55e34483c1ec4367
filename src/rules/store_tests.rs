//! The store glue against a real PostgreSQL: a database of its own per test, with the
//! `vehicles` columns the ingest store provides and this module's migration.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

use super::store::{self, AlertActionError, VehicleRow};
use super::{Engine, VehicleRuleState};
use crate::config::Config;
use crate::domain::{AlertEventType, AlertState, Reading, Severity, VehicleId, VehicleKind};
use crate::geo::{Crs, ZoneIndex};

const LAT: f64 = 37.145;
const LON: f64 = 111.781;
const M_LAT: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

fn at(east: f64, north: f64) -> (f64, f64) {
    (
        LAT + north / M_LAT,
        LON + east / (M_LAT * LAT.to_radians().cos()),
    )
}

struct TestDb {
    name: String,
    client: Client,
}

async fn connect(db: &str) -> Client {
    // The tests' server: the system's, or the throwaway one `tests/services.sh` started.
    let pg = std::env::var("HYFLEET_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let (client, conn) = tokio_postgres::connect(&format!("{pg}/{db}"), NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {pg}: {e}"));
    tokio::spawn(conn);
    client
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("hyfleet_test_rules_{}", uuid::Uuid::new_v4().simple());
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let client = connect(&name).await;
        // The columns of `vehicles` that the ingest migration (0001) provides.
        client
            .batch_execute(
                "CREATE TABLE vehicles (id serial PRIMARY KEY, code text UNIQUE NOT NULL, \
                 kind text NOT NULL, tank_g real, km_per_g real, learned_km_per_g real, \
                 rule_state jsonb NOT NULL DEFAULT '{}')",
            )
            .await
            .unwrap();
        client
            .batch_execute(include_str!("../../schemas/migrations/0002_rules.sql"))
            .await
            .unwrap();
        client
            .batch_execute(include_str!("../../schemas/migrations/0011_buses.sql"))
            .await
            .unwrap();
        TestDb { name, client }
    }

    async fn drop(self) {
        drop(self.client);
        let admin = connect("postgres").await;
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }

    async fn vehicle(&self, code: &str) -> VehicleRow {
        let id: i32 = self
            .client
            .query_one(
                "INSERT INTO vehicles (code, kind, tank_g) VALUES ($1, 'bike', 50) RETURNING id",
                &[&code],
            )
            .await
            .unwrap()
            .get(0);
        VehicleRow {
            id,
            code: VehicleId::parse(code).unwrap(),
            kind: VehicleKind::Bike,
        }
    }
}

fn zones() -> Arc<ZoneIndex> {
    let (la0, lo0) = at(0.0, 0.0);
    let (la1, lo1) = at(100.0, 100.0);
    let fc = json!({"type": "FeatureCollection", "features": [{
        "type": "Feature",
        "properties": {"id": "P1", "name": "Xiaoyi People's Hospital", "kind": "parking"},
        "geometry": {"type": "Polygon", "coordinates":
            [[[lo0, la0], [lo1, la0], [lo1, la1], [lo0, la1], [lo0, la0]]]}
    }]});
    Arc::new(ZoneIndex::from_geojson(&fc.to_string(), Crs::Wgs84).unwrap())
}

fn engine() -> Engine {
    Engine::new(&Config::default(), zones()).unwrap()
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 4, 29, 8, 0, 0).unwrap() + Duration::seconds(secs)
}

fn rd(v: &VehicleRow, secs: i64, h2: f32) -> Reading {
    let (lat, lon) = at(50.0, 50.0);
    Reading {
        locked: Some(false),
        ..Reading::bare(v.code.as_str(), t(secs), lat, lon, h2)
    }
}

async fn batch(
    db: &mut TestDb,
    e: &Engine,
    v: &VehicleRow,
    readings: Vec<Reading>,
    now: DateTime<Utc>,
) -> Vec<crate::domain::AlertEvent> {
    let tx = db.client.transaction().await.unwrap();
    tx.query("SELECT id FROM vehicles WHERE id = $1 FOR UPDATE", &[&v.id])
        .await
        .unwrap();
    let refs: Vec<&Reading> = readings.iter().collect();
    let out = store::apply_batch(&tx, e, std::slice::from_ref(v), &refs, &[], now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    out
}

#[tokio::test]
async fn a_drained_bike_is_opened_escalated_and_resolved_with_every_transition_stored() {
    let mut db = TestDb::new().await;
    let e = engine();
    let v = db.vehicle("XY-B0001").await;
    let mut types = Vec::new();
    let mut secs = 0;
    let mut h2 = 50.0;
    // Batches of ten readings, half a gram every 30 s, then a refuel.
    while h2 >= 4.0 {
        let mut readings = Vec::new();
        for _ in 0..10 {
            if h2 >= 4.0 {
                readings.push(rd(&v, secs, h2));
            }
            h2 -= 0.5;
            secs += 30;
        }
        types.extend(batch(&mut db, &e, &v, readings, t(secs)).await);
    }
    let parked = (0..4).map(|i| rd(&v, secs + i * 30, 4.0)).collect();
    types.extend(batch(&mut db, &e, &v, parked, t(secs + 120)).await);
    secs += 120;
    types.extend(
        batch(
            &mut db,
            &e,
            &v,
            vec![rd(&v, secs + 600, 48.0)],
            t(secs + 600),
        )
        .await,
    );
    let kinds: Vec<_> = types
        .iter()
        .map(|e| (e.event_type, e.alert.severity))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AlertEventType::Opened, Severity::Warning),
            (AlertEventType::Escalated, Severity::Critical),
            (AlertEventType::Resolved, Severity::Critical),
        ]
    );
    assert!(
        types
            .iter()
            .all(|e| e.alert.id == types[0].alert.id && e.alert.vehicle_id == "XY-B0001")
    );
    let rows = db
        .client
        .query(
            "SELECT id, event_type, actor FROM alert_transitions ORDER BY at",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, types.iter().map(|e| e.id).collect::<Vec<_>>());
    let state: serde_json::Value = db
        .client
        .query_one("SELECT rule_state FROM vehicles WHERE id = $1", &[&v.id])
        .await
        .unwrap()
        .get(0);
    let state: VehicleRuleState = serde_json::from_value(state).unwrap();
    assert_eq!(state.last_ts, Some(t(secs + 600)));

    // The dead-zone backlog from before the refuel: stored by ingest, no alert from it.
    let backlog = (0..10).map(|i| rd(&v, 600 + i * 30, 3.0)).collect();
    assert!(
        batch(&mut db, &e, &v, backlog, t(secs + 700))
            .await
            .is_empty()
    );
    let open: i64 = db
        .client
        .query_one("SELECT count(*) FROM alerts WHERE state <> 'resolved'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    db.drop().await;
}

#[tokio::test]
async fn a_parking_violation_goes_through_its_operator_lifecycle() {
    let mut db = TestDb::new().await;
    let e = engine();
    let v = db.vehicle("XY-B0002").await;
    let mut ride: Vec<Reading> = (0..5).map(|i| rd(&v, i * 10, 30.0)).collect();
    let mut lock = rd(&v, 60, 29.5);
    (lock.lat, lock.lon) = at(140.0, 50.0);
    lock.locked = Some(true);
    ride.push(lock);
    let events = batch(&mut db, &e, &v, ride, t(61)).await;
    assert_eq!(events.len(), 1);
    let opened = &events[0];
    assert_eq!(opened.event_type, AlertEventType::Opened);
    assert_eq!(opened.alert.rule, "parking_violation");
    assert_eq!(opened.alert.details["nearest_zone"], "P1");
    assert_eq!(
        opened.alert.details["nearest_zone_name"],
        "Xiaoyi People's Hospital"
    );
    let d = opened.alert.details["distance_m"].as_f64().unwrap();
    assert!((d - 40.0).abs() < 0.5, "{d}");
    let ride = db
        .client
        .query_one(
            "SELECT ended_in_parking, h2_used_g, started_at FROM rides",
            &[],
        )
        .await
        .unwrap();
    assert!(!ride.get::<_, bool>(0));
    assert_eq!(ride.get::<_, f32>(1), 0.5);
    assert_eq!(ride.get::<_, DateTime<Utc>>(2), t(0));

    let id = opened.alert.id;
    let tx = db.client.transaction().await.unwrap();
    let ack = store::acknowledge(&tx, id, "dispatch-1", Some("sending a van"))
        .await
        .unwrap();
    assert_eq!(ack.event_type, AlertEventType::Acknowledged);
    assert_eq!(ack.alert.state, AlertState::Acknowledged);
    assert!(matches!(
        store::acknowledge(&tx, id, "dispatch-2", None).await,
        Err(AlertActionError::AlreadyAcknowledged(_))
    ));
    let res = store::resolve(&tx, id, "dispatch-1", Some("moved to P1"))
        .await
        .unwrap();
    assert_eq!(res.alert.state, AlertState::Resolved);
    assert!(res.alert.resolved_at.is_some());
    assert!(matches!(
        store::resolve(&tx, id, "x", None).await,
        Err(AlertActionError::AlreadyResolved(_))
    ));
    assert!(matches!(
        store::acknowledge(&tx, 9999, "x", None).await,
        Err(AlertActionError::NotFound(9999))
    ));
    tx.commit().await.unwrap();

    // The same rider parks badly again: a new incident, since the operator closed the last.
    let mut again: Vec<Reading> = (0..3).map(|i| rd(&v, 1000 + i * 10, 29.0)).collect();
    let mut lock = rd(&v, 1040, 28.8);
    (lock.lat, lock.lon) = at(140.0, 50.0);
    lock.locked = Some(true);
    again.push(lock);
    let events = batch(&mut db, &e, &v, again, t(1041)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, AlertEventType::Opened);
    assert_ne!(events[0].alert.id, id);
    let actors: Vec<String> = db
        .client
        .query(
            "SELECT actor FROM alert_transitions WHERE alert_id = $1 ORDER BY at",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actors, ["rules", "dispatch-1", "dispatch-1"]);
    db.drop().await;
}

#[tokio::test]
async fn at_most_one_alert_is_in_progress_per_vehicle_rule_and_zone() {
    let db = TestDb::new().await;
    let v = db.vehicle("XY-B0003").await;
    let insert = "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at) \
                  VALUES ($1, 'offline', $2, 'open', 'warning', now())";
    let none: Option<&str> = None;
    db.client.execute(insert, &[&v.id, &none]).await.unwrap();
    assert!(
        db.client.execute(insert, &[&v.id, &none]).await.is_err(),
        "NULL zones collide"
    );
    db.client
        .execute(insert, &[&v.id, &Some("P1")])
        .await
        .unwrap();
    db.client
        .execute("UPDATE alerts SET state = 'resolved'", &[])
        .await
        .unwrap();
    db.client.execute(insert, &[&v.id, &none]).await.unwrap();
    db.drop().await;
}

async fn sweep(db: &mut TestDb, e: &Engine, now: DateTime<Utc>) -> Vec<crate::domain::AlertEvent> {
    let tx = db.client.transaction().await.unwrap();
    let out = store::sweep_offline(&tx, e, now).await.unwrap();
    tx.commit().await.unwrap();
    out
}

#[tokio::test]
async fn the_offline_sweep_opens_once_and_any_message_resolves() {
    let mut db = TestDb::new().await;
    let e = engine();
    let v = db.vehicle("XY-B0004").await;
    let quiet = db.vehicle("XY-B0005").await;
    assert!(
        batch(&mut db, &e, &v, vec![rd(&v, 0, 30.0)], t(0))
            .await
            .is_empty()
    );
    assert!(
        batch(&mut db, &e, &quiet, vec![rd(&quiet, 500, 30.0)], t(500))
            .await
            .is_empty()
    );
    let out = sweep(&mut db, &e, t(700)).await;
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].event_type, out[0].alert.vehicle_id.as_str()),
        (AlertEventType::Opened, "XY-B0004")
    );
    assert_eq!(out[0].alert.rule, "offline");
    assert!(sweep(&mut db, &e, t(800)).await.is_empty(), "already open");
    let back = batch(&mut db, &e, &v, vec![rd(&v, 900, 30.0)], t(900)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].event_type, back[0].at),
        (AlertEventType::Resolved, t(900))
    );
    db.drop().await;
}

#[tokio::test]
async fn zones_are_imported_from_geojson_and_loaded_back() {
    let db = TestDb::new().await;
    let (glat, glon) = crate::geo::gcj02::wgs84_to_gcj02(LAT, LON);
    let file = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "S1", "name": "Energy island 1", "kind": "station", "radius_m": 30},
         "geometry": {"type": "Point", "coordinates": [glon, glat]}},
        {"type": "Feature", "properties": {"id": "Z1", "kind": "slow", "max_speed_kmh": 10, "note": "school"},
         "geometry": {"type": "Polygon", "coordinates": [[[glon, glat], [glon + 0.001, glat], [glon + 0.001, glat + 0.001], [glon, glat]]]}}
    ]})
    .to_string();
    assert_eq!(
        store::import_zones(&db.client, &file, Crs::Gcj02)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store::import_zones(&db.client, &file, Crs::Gcj02)
            .await
            .unwrap(),
        2,
        "re-import replaces"
    );
    let idx = store::load_zones(&db.client).await.unwrap();
    assert_eq!(idx.len(), 2);
    let (z, d) = idx.nearest_station(LAT, LON).unwrap();
    assert_eq!((z.id.as_str(), d), ("S1", 0.0));
    assert!(z.signed_distance_m(LAT, LON) < -25.0, "stored in WGS-84");
    let slow = idx.get("Z1").unwrap();
    assert_eq!(slow.max_speed_kmh, Some(10.0));
    assert_eq!(slow.properties["note"], "school");
    let bad = json!({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": "X", "kind": "moat"}, "geometry": null}]});
    let err = store::import_zones(&db.client, &bad.to_string(), Crs::Wgs84)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("features[0]"), "{err:#}");
    db.drop().await;
}

#[tokio::test]
async fn a_partial_refuel_stores_a_deescalation_and_keeps_the_alert_open() {
    let mut db = TestDb::new().await;
    let e = engine();
    let v = db.vehicle("XY-B0009").await;
    let drained = (0..5).map(|i| rd(&v, i * 30, 4.0)).collect();
    let mut events = batch(&mut db, &e, &v, drained, t(150)).await;
    let partial = (5..10).map(|i| rd(&v, i * 30, 8.0)).collect();
    events.extend(batch(&mut db, &e, &v, partial, t(300)).await);
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.event_type, e.alert.severity, e.alert.state))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AlertEventType::Opened, Severity::Critical, AlertState::Open),
            (
                AlertEventType::Deescalated,
                Severity::Warning,
                AlertState::Open
            ),
        ]
    );
    let row = db
        .client
        .query_one(
            "SELECT t.event_type, t.severity, a.severity FROM alert_transitions t \
             JOIN alerts a ON a.id = t.alert_id ORDER BY t.at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "alert.deescalated");
    assert_eq!(row.get::<_, String>(1), "warning");
    assert_eq!(row.get::<_, String>(2), "warning");
    db.drop().await;
}

#[tokio::test]
async fn learning_never_overwrites_the_operator_set_consumption() {
    let mut db = TestDb::new().await;
    let e = engine();
    let v = db.vehicle("XY-B0010").await;
    db.client
        .execute("UPDATE vehicles SET km_per_g = 0.9 WHERE id = $1", &[&v.id])
        .await
        .unwrap();
    // 6 km on 7.2 g, then a refuel: a sample of 0.833 km/g.
    let ride = (0..=12)
        .map(|i| {
            let (lat, lon) = at(50.0 + i as f64 * 500.0, 50.0);
            let mut r = rd(&v, i * 60, 40.0 - i as f32 * 0.6);
            (r.lat, r.lon, r.speed_kmh, r.odo_km) = (lat, lon, 20.0, Some(100.0 + i as f64 * 0.5));
            r
        })
        .collect();
    batch(&mut db, &e, &v, ride, t(720)).await;
    let mut refuel = rd(&v, 1000, 49.0);
    (refuel.lat, refuel.lon) = at(6050.0, 50.0);
    (refuel.speed_kmh, refuel.odo_km) = (0.0, Some(106.0));
    batch(&mut db, &e, &v, vec![refuel], t(1000)).await;
    let row = db
        .client
        .query_one(
            "SELECT km_per_g, learned_km_per_g FROM vehicles WHERE id = $1",
            &[&v.id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<f32>>(0),
        Some(0.9),
        "the operator's figure"
    );
    let learned: f32 = row.get::<_, Option<f32>>(1).expect("learned");
    assert!((learned - 6.0 / 7.2).abs() < 1e-3, "{learned}");
    db.drop().await;
}
