//! The dashboard in headless Chromium against the running service with a seeded fleet:
//! vehicles and zones on the map, open alerts, fleet figures, a vehicle's history, and an
//! acknowledgement clicked by hand that reaches the store. The screenshot is kept in
//! `test-artifacts/dashboard.png`.

mod webdriver;

use hyfleet::geo::Crs;

use crate::gbfs::seed_vehicle;
use crate::support::{BROKER, InProcess, Publisher, TestDb, config, count, eventually};
use webdriver::Browser;

/// An operator's token. With bearer auth on, the test configuration must grant it.
const TOKEN: &str = "dashboard-test-operator-token";

const BIKES: usize = 40;
const BUSES: usize = 2;

async fn seed(db: &tokio_postgres::Client) -> Vec<i64> {
    hyfleet::rules::store::import_zones(db, hyfleet::sim::data::ZONES_GEOJSON, Crs::Wgs84)
        .await
        .unwrap();
    for i in 0..BIKES {
        // A grid over the urban area; hydrogen from 2.5 % to 100 %.
        let at = (
            37.125 + 0.005 * (i / 8) as f64,
            111.755 + 0.007 * (i % 8) as f64,
        );
        let h2 = 50.0 * (i + 1) as f32 / BIKES as f32;
        let riding = i % 5 == 1;
        seed_vehicle(
            db,
            &format!("XY-B{:04}", i + 1),
            "bike",
            at,
            h2,
            !riding,
            true,
        )
        .await;
    }
    for i in 0..BUSES {
        let at = (37.135 - 0.02 * i as f64, 111.80 + 0.02 * i as f64);
        seed_vehicle(
            db,
            &format!("XY-H{:04}", i + 1),
            "bus",
            at,
            18_000.0,
            false,
            true,
        )
        .await;
    }
    // One bike went quiet two hours ago.
    db.execute(
        "UPDATE vehicles SET online = false, last_seen = now() - interval '2 h' WHERE code = 'XY-B0040'",
        &[],
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (code, rule, severity, zone) in [
        ("XY-B0001", "low_hydrogen", "critical", None),
        ("XY-B0007", "parking_violation", "warning", Some("P01")),
        ("XY-B0040", "offline", "warning", None),
    ] {
        let row = db
            .query_one(
                "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at, lat, lon, details) \
                 SELECT id, $2, $3, 'open', $4, now() - interval '5 min', lat, lon, '{}' \
                 FROM vehicles WHERE code = $1 RETURNING id",
                &[&code, &rule, &zone, &severity],
            )
            .await
            .unwrap();
        ids.push(row.get(0));
    }
    ids
}

/// Two hours of one bike's readings, a minute apart, published as its firmware would send a
/// backlog: a ride with hydrogen falling. The chart reads them back from the minute rollups.
async fn publish_history(db: &tokio_postgres::Client, root: &str) {
    let mut fw = Publisher::connect(BROKER).await;
    let now = chrono::Utc::now();
    for m in 0..120i64 {
        let ts = now - chrono::Duration::minutes(m);
        let reading = serde_json::json!({
            "ts": ts.to_rfc3339(), "seq": 120 - m, "lat": 37.14 + m as f64 * 0.0001,
            "lon": 111.78, "speed_kmh": 10.0 + 8.0 * (m as f64 / 7.0).sin(),
            "h2_g": 20.0 + m as f64 * 0.1, "locked": false,
        });
        fw.publish(
            &format!("{root}/bike/XY-B0003/telemetry"),
            reading.to_string(),
        )
        .await;
    }
    fw.flush().await;
    eventually(30, "the backlog stored", || async {
        let n = count(
            db,
            "SELECT count(*) FROM telemetry_1m r JOIN vehicles v ON v.id = r.vehicle \
             WHERE v.code = 'XY-B0003'",
        )
        .await;
        (n == 120).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dashboard_shows_the_fleet_and_acknowledges_an_alert_in_a_real_browser() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let alerts = seed(&client).await;
    let mut c = config(&db, BROKER);
    // The dashboard acts as a dispatcher would: an operator's token, enough to acknowledge.
    c.api.tokens.push(hyfleet::api::TokenConfig {
        name: "dispatcher".into(),
        role: hyfleet::api::Role::Operator,
        token: Some(TOKEN.into()),
        token_sha256: None,
    });
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;
    publish_history(&client, &root).await;

    let browser = Browser::start().await;
    browser.goto(&svc.url("/#vehicle=XY-B0003")).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#token-save").await;

    let stored = browser
        .eval("return localStorage.getItem('hyfleet.token')")
        .await;
    assert_eq!(stored, TOKEN, "the page keeps the token");

    let zones = browser
        .wait_for(
            20,
            "zones on the map",
            "return document.querySelectorAll('#zones .zone').length",
        )
        .await;
    let stored = count(&client, "SELECT count(*) FROM zones").await;
    assert_eq!(zones, stored, "every sample zone is drawn");
    let dots = browser
        .wait_for(
            20,
            "vehicles on the map",
            "return document.querySelectorAll('#vehicles circle').length",
        )
        .await;
    assert_eq!(dots, BIKES + BUSES);
    // Coloured by hydrogen and state.
    let fill = |code: &str| {
        format!("return document.querySelector('[data-vehicle=\"{code}\"]').getAttribute('fill')")
    };
    assert_eq!(
        browser.eval(&fill("XY-B0001")).await,
        "#a50026",
        "2.5 %: critical"
    );
    assert_eq!(
        browser.eval(&fill("XY-B0039")).await,
        "#1a9850",
        "97.5 %: full"
    );
    assert_eq!(browser.eval(&fill("XY-B0040")).await, "#9e9e9e", "offline");
    let riding = browser
        .eval("return document.querySelector('[data-vehicle=\"XY-B0002\"]').classList.contains('riding')")
        .await;
    assert_eq!(riding, true);

    // Open alerts, newest first, each with its button.
    let rows = browser
        .wait_for(
            20,
            "open alerts",
            "return document.querySelectorAll('#alerts tbody tr').length",
        )
        .await;
    assert_eq!(rows, 3);
    let figures = browser
        .wait_for(
            20,
            "fleet figures",
            "const t = document.getElementById('fig-online').textContent; return t !== '–' && t",
        )
        .await;
    assert_eq!(figures, (BIKES + BUSES - 1).to_string(), "online vehicles");

    // The chosen bike's history is drawn.
    let points = browser
        .wait_for(
            20,
            "the vehicle chart",
            "return Number(document.getElementById('chart').dataset.points || 0)",
        )
        .await;
    assert!(points.as_u64().unwrap() >= 60, "{points}");

    // Acknowledge the parking violation by clicking its button.
    let target = alerts[1];
    browser
        .click(&format!("#alerts tr[data-alert=\"{target}\"] button.ack"))
        .await;
    browser
        .wait_for(
            20,
            "the acknowledged alert to leave the open list",
            &format!("return !document.querySelector('#alerts tr[data-alert=\"{target}\"]')"),
        )
        .await;
    let row = client
        .query_one(
            "SELECT state, acknowledged_at IS NOT NULL FROM alerts WHERE id = $1",
            &[&target],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acknowledged");
    assert!(row.get::<_, bool>(1));
    let others: i64 = client
        .query_one("SELECT count(*) FROM alerts WHERE state = 'open'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(others, 2, "only the clicked alert changed");
    // A reload asks the API again: the acknowledgement is not just on screen.
    browser.goto(&svc.url("/#vehicle=XY-B0003")).await;
    browser
        .wait_for(
            20,
            "two open alerts after reload",
            "return document.querySelectorAll('#alerts tbody tr').length === 2",
        )
        .await;
    browser
        .wait_for(
            20,
            "the chart after reload",
            "return Number(document.getElementById('chart').dataset.points || 0)",
        )
        .await;

    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/dashboard.png");
    browser.screenshot(&shot).await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real picture"
    );
    browser.quit().await;
    svc.stop().await;
}
