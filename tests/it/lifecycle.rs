//! The alert lifecycle through the real unit of work: batches committed by
//! `ingest::commit::Committer` into a database with every migration, the offline sweep, and
//! the operator's acknowledge and resolve, as the alerts repository runs them.

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use hyfleet::config::Config;
use hyfleet::decode::Decoded;
use hyfleet::domain::{
    AlertEvent, AlertEventType, AlertState, Reading, Severity, VehicleId, VehicleKind,
};
use hyfleet::geo::{Crs, ZoneIndex};
use hyfleet::ingest::Services;
use hyfleet::ingest::commit::{Committer, Outcome};
use hyfleet::live::{Hub, LiveEvent};
use hyfleet::rules::{Engine, SharedEngine, VehicleRuleState};
use hyfleet::store::alerts::{self, ActionError};
use serde_json::json;
use tokio_postgres::Client;

use crate::support::TestDb;

const LAT: f64 = 37.145;
const LON: f64 = 111.781;
const M_LAT: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

fn at(east: f64, north: f64) -> (f64, f64) {
    (
        LAT + north / M_LAT,
        LON + east / (M_LAT * LAT.to_radians().cos()),
    )
}

/// A database with every migration and today's partitions, a committer on it whose rules run
/// over one parking area, and a listener on the live feed, which is how the events a commit
/// publishes are seen here.
struct Lab {
    _db: TestDb,
    client: Client,
    committer: Committer,
    engine: Arc<Engine>,
    live: tokio::sync::broadcast::Receiver<LiveEvent>,
    /// Every reading's time is counted from here: two hours ago, on the hour.
    base: DateTime<Utc>,
}

/// A bike registered by the test.
struct Bike {
    id: i32,
    code: &'static str,
}

impl Lab {
    /// What the rules remember of vehicle `id`, as stored.
    async fn rule_state(&self, id: i32) -> VehicleRuleState {
        let state: serde_json::Value = self
            .client
            .query_one("SELECT rule_state FROM vehicles WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        serde_json::from_value(state).unwrap()
    }

    async fn new() -> Self {
        let db = TestDb::new().await;
        let client = db.client().await;
        hyfleet::store::partitions::maintain(&client, 7, 1, Utc::now())
            .await
            .unwrap();
        let c = Config::default();
        let engine = Engine::new(&c.rules, &c.profiles, c.geo.crs, zones()).unwrap();
        let live = Hub::default();
        let services = Services {
            registry: Arc::new(hyfleet::store::Registry::new()),
            rules: Arc::new(SharedEngine::new(engine.clone())),
            alerts: hyfleet::notify::AlertPublisher::new(live.clone()),
            live: live.clone(),
        };
        let profiles = Config::default().profiles;
        let committer = Committer::connect(&db.url(), profiles, false, services)
            .await
            .unwrap();
        let base = (Utc::now() - Duration::hours(2))
            .duration_trunc(Duration::hours(1))
            .unwrap();
        Lab {
            _db: db,
            client,
            committer,
            engine: Arc::new(engine),
            live: live.subscribe(),
            base,
        }
    }

    /// Registered as ingest registers a bike it sees first: its profile's tank, speed cap
    /// and consumption.
    async fn vehicle(&self, code: &'static str) -> Bike {
        let vid = VehicleId::parse(code).unwrap();
        let refs = hyfleet::store::Registry::new()
            .resolve(
                &self.client,
                &[(vid.clone(), VehicleKind::Bike)],
                true,
                &Config::default().profiles,
            )
            .await
            .unwrap();
        Bike {
            id: refs[&vid].id,
            code,
        }
    }

    fn t(&self, secs: i64) -> DateTime<Utc> {
        self.base + Duration::seconds(secs)
    }

    fn rd(&self, v: &Bike, secs: i64, h2: f32) -> Reading {
        let (lat, lon) = at(50.0, 50.0);
        Reading {
            locked: Some(false),
            ..Reading::bare(v.code, self.t(secs), lat, lon, h2)
        }
    }

    /// Commit `readings` as one batch arriving at `now`; returns the alert transitions it
    /// published.
    async fn batch(&mut self, readings: Vec<Reading>, now: DateTime<Utc>) -> Vec<AlertEvent> {
        self.commit(readings, now).await;
        self.published()
    }

    async fn commit(&mut self, readings: Vec<Reading>, now: DateTime<Utc>) -> Outcome {
        let mut batch = Decoded {
            readings,
            ..Decoded::default()
        };
        let outcome = self.committer.commit(&mut batch, now).await.unwrap();
        assert!(batch.rejects.is_empty(), "{:?}", batch.rejects);
        outcome
    }

    /// What the live feed was told since the last look.
    fn published(&mut self) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.live.try_recv() {
            if let LiveEvent::Alert(a) = e {
                out.push(a);
            }
        }
        out
    }

    async fn sweep(&mut self, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let tx = self.client.transaction().await.unwrap();
        let out = hyfleet::ingest::sweep::sweep(&tx, &self.engine, now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        out
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

/// The operator's resolve, as the API runs it.
async fn resolve(
    tx: &tokio_postgres::Transaction<'_>,
    id: i64,
    actor: &str,
    note: Option<&str>,
) -> Result<AlertEvent, ActionError> {
    alerts::resolve(tx, id, actor, note, |a, stored| {
        Ok(hyfleet::store::jsonb::JsonText(hyfleet::rules::forget(
            &a.vehicle_id,
            &stored.0,
            &a.rule,
            a.zone.as_deref(),
        )?))
    })
    .await
}

#[tokio::test]
async fn a_drained_bike_is_opened_escalated_and_resolved_with_every_transition_stored() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0001").await;
    let mut types = Vec::new();
    let mut secs = 0;
    let mut h2 = 50.0;
    // Batches of ten readings, half a gram every 30 s, then a refuel.
    while h2 >= 4.0 {
        let mut readings = Vec::new();
        for _ in 0..10 {
            if h2 >= 4.0 {
                readings.push(lab.rd(&v, secs, h2));
            }
            h2 -= 0.5;
            secs += 30;
        }
        types.extend(lab.batch(readings, lab.t(secs)).await);
    }
    let parked = (0..4).map(|i| lab.rd(&v, secs + i * 30, 4.0)).collect();
    types.extend(lab.batch(parked, lab.t(secs + 120)).await);
    secs += 120;
    types.extend(
        lab.batch(vec![lab.rd(&v, secs + 600, 48.0)], lab.t(secs + 600))
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
    let rows = lab
        .client
        .query(
            "SELECT id, event_type, actor FROM alert_transitions ORDER BY at",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, types.iter().map(|e| e.id).collect::<Vec<_>>());
    let state = lab.rule_state(v.id).await;
    assert_eq!(state.last_ts, Some(lab.t(secs + 600)));

    // The dead-zone backlog from before the refuel: stored by ingest, no alert from it.
    let backlog = (0..10).map(|i| lab.rd(&v, 600 + i * 30, 3.0)).collect();
    assert!(lab.batch(backlog, lab.t(secs + 700)).await.is_empty());
    let open: i64 = lab
        .client
        .query_one("SELECT count(*) FROM alerts WHERE state <> 'resolved'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
}

#[tokio::test]
async fn a_parking_violation_goes_through_its_operator_lifecycle() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0002").await;
    let mut ride: Vec<Reading> = (0..5).map(|i| lab.rd(&v, i * 10, 30.0)).collect();
    let mut lock = lab.rd(&v, 60, 29.5);
    (lock.lat, lock.lon) = at(140.0, 50.0);
    lock.locked = Some(true);
    ride.push(lock);
    let events = lab.batch(ride, lab.t(61)).await;
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
    let ride = lab
        .client
        .query_one(
            "SELECT ended_in_parking, h2_used_g, started_at FROM rides",
            &[],
        )
        .await
        .unwrap();
    assert!(!ride.get::<_, bool>(0));
    assert_eq!(ride.get::<_, f32>(1), 0.5);
    assert_eq!(ride.get::<_, DateTime<Utc>>(2), lab.t(0));

    let id = opened.alert.id;
    let tx = lab.client.transaction().await.unwrap();
    let ack = alerts::acknowledge(&tx, id, "dispatch-1", Some("sending a van"))
        .await
        .unwrap();
    assert_eq!(ack.event_type, AlertEventType::Acknowledged);
    assert_eq!(ack.alert.state, AlertState::Acknowledged);
    assert!(matches!(
        alerts::acknowledge(&tx, id, "dispatch-2", None).await,
        Err(ActionError::AlreadyAcknowledged(_))
    ));
    let res = resolve(&tx, id, "dispatch-1", Some("moved to P1"))
        .await
        .unwrap();
    assert_eq!(res.alert.state, AlertState::Resolved);
    assert!(res.alert.resolved_at.is_some());
    assert!(matches!(
        resolve(&tx, id, "x", None).await,
        Err(ActionError::AlreadyResolved(_))
    ));
    assert!(matches!(
        alerts::acknowledge(&tx, 9999, "x", None).await,
        Err(ActionError::NotFound(9999))
    ));
    tx.commit().await.unwrap();

    // The same rider parks badly again: a new incident, since the operator closed the last.
    let mut again: Vec<Reading> = (0..3).map(|i| lab.rd(&v, 1000 + i * 10, 29.0)).collect();
    let mut lock = lab.rd(&v, 1040, 28.8);
    (lock.lat, lock.lon) = at(140.0, 50.0);
    lock.locked = Some(true);
    again.push(lock);
    let events = lab.batch(again, lab.t(1041)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, AlertEventType::Opened);
    assert_ne!(events[0].alert.id, id);
    let actors: Vec<String> = lab
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
}

#[tokio::test]
async fn at_most_one_alert_is_in_progress_per_vehicle_rule_and_zone() {
    let lab = Lab::new().await;
    let v = lab.vehicle("XY-B0003").await;
    let insert = "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at) \
                  VALUES ($1, 'offline', $2, 'open', 'warning', now())";
    let none: Option<&str> = None;
    lab.client.execute(insert, &[&v.id, &none]).await.unwrap();
    assert!(
        lab.client.execute(insert, &[&v.id, &none]).await.is_err(),
        "NULL zones collide"
    );
    lab.client
        .execute(insert, &[&v.id, &Some("P1")])
        .await
        .unwrap();
    lab.client
        .execute("UPDATE alerts SET state = 'resolved'", &[])
        .await
        .unwrap();
    lab.client.execute(insert, &[&v.id, &none]).await.unwrap();
}

#[tokio::test]
async fn the_offline_sweep_opens_once_and_any_message_resolves() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0004").await;
    let quiet = lab.vehicle("XY-B0005").await;
    assert!(
        lab.batch(vec![lab.rd(&v, 0, 30.0)], lab.t(0))
            .await
            .is_empty()
    );
    assert!(
        lab.batch(vec![lab.rd(&quiet, 500, 30.0)], lab.t(500))
            .await
            .is_empty()
    );
    let out = lab.sweep(lab.t(700)).await;
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].event_type, out[0].alert.vehicle_id.as_str()),
        (AlertEventType::Opened, "XY-B0004")
    );
    assert_eq!(out[0].alert.rule, "offline");
    assert!(lab.sweep(lab.t(800)).await.is_empty(), "already open");
    let back = lab.batch(vec![lab.rd(&v, 900, 30.0)], lab.t(900)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].event_type, back[0].at),
        (AlertEventType::Resolved, lab.t(900))
    );
}

#[tokio::test]
async fn zones_are_imported_from_geojson_and_loaded_back() {
    let lab = Lab::new().await;
    let (glat, glon) = hyfleet::geo::gcj02::wgs84_to_gcj02(LAT, LON);
    let file = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "S1", "name": "Energy island 1", "kind": "station", "radius_m": 30},
         "geometry": {"type": "Point", "coordinates": [glon, glat]}},
        {"type": "Feature", "properties": {"id": "Z1", "kind": "slow", "max_speed_kmh": 10, "note": "school"},
         "geometry": {"type": "Polygon", "coordinates": [[[glon, glat], [glon + 0.001, glat], [glon + 0.001, glat + 0.001], [glon, glat]]]}}
    ]})
    .to_string();
    assert_eq!(
        hyfleet::store::zones::import(&lab.client, &file, Crs::Gcj02)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        hyfleet::store::zones::import(&lab.client, &file, Crs::Gcj02)
            .await
            .unwrap(),
        2,
        "re-import replaces"
    );
    let idx = hyfleet::store::zones::load(&lab.client).await.unwrap();
    assert_eq!(idx.len(), 2);
    let (z, d) = idx.nearest_station(LAT, LON).unwrap();
    assert_eq!((z.id.as_str(), d), ("S1", 0.0));
    assert!(z.signed_distance_m(LAT, LON) < -25.0, "stored in WGS-84");
    let slow = idx.get("Z1").unwrap();
    assert_eq!(slow.max_speed_kmh, Some(10.0));
    assert_eq!(slow.properties["note"], "school");
    let bad = json!({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": "X", "kind": "moat"}, "geometry": null}]});
    let err = hyfleet::store::zones::import(&lab.client, &bad.to_string(), Crs::Wgs84)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("features[0]"), "{err:#}");
}

#[tokio::test]
async fn a_partial_refuel_stores_a_deescalation_and_keeps_the_alert_open() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0009").await;
    let drained = (0..5).map(|i| lab.rd(&v, i * 30, 4.0)).collect();
    let mut events = lab.batch(drained, lab.t(150)).await;
    let partial = (5..10).map(|i| lab.rd(&v, i * 30, 8.0)).collect();
    events.extend(lab.batch(partial, lab.t(300)).await);
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
    let row = lab
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
}

#[tokio::test]
async fn learning_never_overwrites_the_operator_set_consumption() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0010").await;
    lab.client
        .execute("UPDATE vehicles SET km_per_g = 0.9 WHERE id = $1", &[&v.id])
        .await
        .unwrap();
    // 6 km on 7.2 g, then a refuel: a sample of 0.833 km/g.
    let ride = (0..=12)
        .map(|i| {
            let (lat, lon) = at(50.0 + i as f64 * 500.0, 50.0);
            let mut r = lab.rd(&v, i * 60, 40.0 - i as f32 * 0.6);
            (r.lat, r.lon, r.speed_kmh, r.odo_km) = (lat, lon, 20.0, Some(100.0 + i as f64 * 0.5));
            r
        })
        .collect();
    lab.batch(ride, lab.t(720)).await;
    let mut refuel = lab.rd(&v, 1000, 49.0);
    (refuel.lat, refuel.lon) = at(6050.0, 50.0);
    (refuel.speed_kmh, refuel.odo_km) = (0.0, Some(106.0));
    lab.batch(vec![refuel], lab.t(1000)).await;
    let row = lab
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
}

#[tokio::test]
async fn readings_stored_before_are_skipped_and_the_new_ones_stored_once() {
    let mut lab = Lab::new().await;
    let v = lab.vehicle("XY-B0011").await;
    let first: Vec<Reading> = (0..5).map(|i| lab.rd(&v, i * 10, 30.0)).collect();
    let fresh = lab.commit(first.clone(), lab.t(50)).await;
    assert_eq!((fresh.stored, fresh.duplicates), (5, 0));
    // A redelivery of the five, two new readings, and one of them sent twice.
    let mut again = first;
    again.extend([
        lab.rd(&v, 60, 29.9),
        lab.rd(&v, 70, 29.8),
        lab.rd(&v, 70, 29.8),
    ]);
    let mixed = lab.commit(again, lab.t(80)).await;
    assert_eq!((mixed.stored, mixed.duplicates), (2, 6));
    assert_eq!(mixed.newest_ts, Some(lab.t(70)));
    let (rows, distinct): (i64, i64) = {
        let r = lab
            .client
            .query_one(
                "SELECT count(*), count(DISTINCT (vehicle, ts, seq)) FROM telemetry",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, distinct), (7, 7));
    // The rules saw each new reading once: the last one acted on is the newest.
    let state = lab.rule_state(v.id).await;
    assert_eq!(state.last_ts, Some(lab.t(70)));
}
