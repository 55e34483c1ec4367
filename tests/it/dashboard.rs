//! The dashboard in headless Chromium against the running service with a seeded fleet:
//! zones and vehicles on the Leaflet map while its tiles cannot be loaded (as offline), dots
//! moved onto GCJ-02 tiles by the same transform as the server's, clusters at low zoom, open
//! alerts with their zone, fleet figures, a vehicle clicked on the map and its history fitted
//! to the readings that exist, an acknowledgement clicked by hand that reaches the store, and
//! the switch to Chinese, remembered. The screenshot is kept in
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
    hyfleet::store::zones::import(db, hyfleet::sample::ZONES_GEOJSON, Crs::Wgs84)
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
    let fire_lane = serde_json::json!({
        "nearest_zone": "P02", "distance_m": 12.0,
        "no_parking_zone": "NP01", "no_parking_zone_name": "People's Hospital emergency lane",
    });
    let mut ids = Vec::new();
    // The parking violation carries what the rule writes: the nearest parking area and how far.
    let parked_out = serde_json::json!({
        "nearest_zone": "P01", "nearest_zone_name": "Department Store south plaza", "distance_m": 41.2,
    });
    for (code, rule, severity, zone, details) in [
        (
            "XY-B0001",
            "low_hydrogen",
            "critical",
            None,
            serde_json::json!({}),
        ),
        ("XY-B0007", "parking_violation", "warning", None, parked_out),
        (
            "XY-B0040",
            "offline",
            "warning",
            None::<&str>,
            serde_json::json!({}),
        ),
        (
            "XY-B0012",
            "parking_violation",
            "warning",
            Some("NP01"),
            fire_lane,
        ),
    ] {
        let row = db
            .query_one(
                "INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at, lat, lon, details) \
                 SELECT id, $2, $3, 'open', $4, now() - interval '5 min', lat, lon, $5 \
                 FROM vehicles WHERE code = $1 RETURNING id",
                &[&code, &rule, &zone, &severity, &details],
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
    let mut fw = Publisher::connect(&BROKER).await;
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

/// Vehicles drawn one by one plus those inside clusters: every vehicle, once.
const DRAWN: &str = "(() => { \
    const dots = document.querySelectorAll('#map [data-vehicle]').length; \
    const inClusters = [...document.querySelectorAll('#map .cluster')] \
      .reduce((n, e) => n + Number(e.dataset.count), 0); \
    return [dots, inClusters]; })()";

#[tokio::test]
async fn dashboard_shows_the_fleet_and_acknowledges_an_alert_in_a_real_browser() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let alerts = seed(&client).await;
    let mut c = config(&db, &BROKER);
    // The dashboard acts as a dispatcher would: an operator's token, enough to acknowledge.
    c.api.tokens.push(hyfleet::api::TokenConfig {
        name: "dispatcher".into(),
        role: hyfleet::api::Role::Operator,
        token: Some(TOKEN.into()),
        token_sha256: None,
    });
    // Tiles from a port where nothing listens: the map must do without them, as offline. They
    // are said to be GCJ-02 (as AMap's are), so every dot and zone is moved for display.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    c.dashboard.tile_url = Some(format!(
        "http://127.0.0.1:{dead_port}/{{z}}/{{x}}/{{y}}.png"
    ));
    c.dashboard.tile_crs = Some(hyfleet::web::TileCrs::Gcj02);
    let root = c.mqtt.topic_root.clone();
    let svc = InProcess::start(c).await;
    publish_history(&client, &root).await;

    let browser = Browser::start().await;
    browser.goto(&svc.url("/")).await;
    // Headless Chromium reads English; a dispatcher's choice is remembered below.
    browser
        .eval("localStorage.removeItem('hyfleet.lang'); return true")
        .await;
    browser.goto(&svc.url("/")).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#token-save").await;

    let stored = browser
        .eval("return localStorage.getItem('hyfleet.token')")
        .await;
    assert_eq!(stored, TOKEN, "the page keeps the token");

    // The dashboard's GCJ-02 transform is the server's, to well under a millimetre.
    for (lat, lon) in [
        (37.145, 111.781),
        (37.027, 111.913),
        (39.9, 116.4),
        (22.5, 114.0),
        (48.85, 2.35),
    ] {
        let js = browser
            .eval(&format!("return hyfleetGeo.wgs84ToGcj02({lat}, {lon})"))
            .await;
        let (g_lat, g_lon) = hyfleet::geo::gcj02::wgs84_to_gcj02(lat, lon);
        let (j_lat, j_lon) = (js[0].as_f64().unwrap(), js[1].as_f64().unwrap());
        assert!(
            (j_lat - g_lat).abs() < 1e-9 && (j_lon - g_lon).abs() < 1e-9,
            "({lat}, {lon}): JS {js} vs Rust ({g_lat}, {g_lon})"
        );
    }

    let zones = browser
        .wait_for(
            20,
            "zones on the map",
            "return document.querySelectorAll('#map .zone').length",
        )
        .await;
    let stored = count(&client, "SELECT count(*) FROM zones").await;
    assert_eq!(zones, stored, "every sample zone is drawn");
    // No tiles came: the page says so and the fleet stands on a plain background.
    browser
        .wait_for(
            20,
            "the note that tiles are unavailable",
            "return !document.getElementById('tiles-note').hidden \
             && document.getElementById('map').classList.contains('no-tiles')",
        )
        .await;

    // At the town's zoom every vehicle is drawn, alone or in a cluster.
    let drawn = browser
        .wait_for(
            20,
            "vehicles on the map",
            &format!(
                "const d = {DRAWN}; return d[0] + d[1] === {} && d",
                BIKES + BUSES
            ),
        )
        .await;
    assert_eq!(
        drawn[0].as_u64().unwrap() + drawn[1].as_u64().unwrap(),
        (BIKES + BUSES) as u64
    );
    // Zoomed out, neighbours fold into numbered clusters, and still every vehicle counts.
    // (A zoom asked for during another's animation is dropped: ask until it holds.)
    let drawn = browser
        .wait_for(
            20,
            "clusters at low zoom",
            &format!(
                "const m = hyfleetMap.map; if (m.getZoom() !== 11) {{ m.setZoom(11); return false; }} \
                 const d = {DRAWN}; return d[1] > 0 && d"
            ),
        )
        .await;
    assert_eq!(
        drawn[0].as_u64().unwrap() + drawn[1].as_u64().unwrap(),
        (BIKES + BUSES) as u64,
        "{drawn}"
    );
    // Close in, every vehicle is its own dot, coloured by hydrogen and state.
    browser
        .wait_for(
            20,
            "single dots at street zoom",
            &format!(
                "const m = hyfleetMap.map; if (m.getZoom() !== 16) {{ m.setZoom(16); return false; }} \
                 return document.querySelectorAll('#map [data-vehicle]').length === {}",
                BIKES + BUSES
            ),
        )
        .await;
    let fill = |code: &str| {
        format!(
            "return document.querySelector('#map [data-vehicle=\"{code}\"]').getAttribute('fill')"
        )
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
        .eval("return document.querySelector('#map [data-vehicle=\"XY-B0002\"]').classList.contains('riding')")
        .await;
    assert_eq!(riding, true);
    // The dot stands where GCJ-02 tiles draw its WGS-84 position, hundreds of metres away.
    let (lat, lon): (f64, f64) = {
        let r = client
            .query_one("SELECT lat, lon FROM vehicles WHERE code = 'XY-B0005'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let dot = browser.eval("return hyfleetMap.dotOf('XY-B0005')").await;
    let (g_lat, g_lon) = hyfleet::geo::gcj02::wgs84_to_gcj02(lat, lon);
    assert!(
        (dot[0].as_f64().unwrap() - g_lat).abs() < 1e-9
            && (dot[1].as_f64().unwrap() - g_lon).abs() < 1e-9,
        "XY-B0005 at {dot}, GCJ-02 of ({lat}, {lon}) is ({g_lat}, {g_lon})"
    );

    // Open alerts, newest first, each with its button; the parking violation names the
    // nearest parking area and its distance.
    let rows = browser
        .wait_for(
            20,
            "open alerts",
            "return document.querySelectorAll('#alerts tbody tr').length",
        )
        .await;
    assert_eq!(rows, 4);
    let zone_cell = browser
        .eval(&format!(
            "return document.querySelector('#alerts tr[data-alert=\"{}\"] td.zone-cell').textContent",
            alerts[1]
        ))
        .await;
    assert_eq!(zone_cell, "nearest Department Store south plaza (41 m)");
    let zone_cell = browser
        .eval(&format!(
            "return document.querySelector('#alerts tr[data-alert=\"{}\"] td.zone-cell').textContent",
            alerts[3]
        ))
        .await;
    assert_eq!(zone_cell, "in People's Hospital emergency lane");
    let figures = browser
        .wait_for(
            20,
            "fleet figures",
            "const t = document.getElementById('fig-online').textContent; return t !== '–' && t",
        )
        .await;
    assert_eq!(figures, (BIKES + BUSES - 1).to_string(), "online vehicles");

    // A click on a bike on the map opens its history: two hours of readings in a three-hour
    // window, and the time axis spans the readings, not the empty hour before them.
    browser
        .wait_for(
            20,
            "the map centred on XY-B0003 at zoom 17",
            "const m = hyfleetMap.map, at = hyfleetMap.dotOf('XY-B0003'); \
             if (!at) return false; \
             if (m.getZoom() !== 17 || m.getCenter().distanceTo(at) > 1) { m.setView(at, 17); return false; } \
             return !!document.querySelector('#map [data-vehicle=\"XY-B0003\"]')",
        )
        .await;
    browser.click("#map [data-vehicle=\"XY-B0003\"]").await;
    browser
        .wait_for(
            20,
            "XY-B0003's facts",
            "return document.getElementById('vehicle-facts').textContent.startsWith('XY-B0003 ')",
        )
        .await;
    let points = browser
        .wait_for(
            20,
            "the vehicle chart",
            "return Number(document.getElementById('chart').dataset.points || 0)",
        )
        .await;
    assert!(points.as_u64().unwrap() >= 60, "{points}");
    let (from, to) = {
        let v = browser
            .eval("const c = document.getElementById('chart'); return [Number(c.dataset.from), Number(c.dataset.to)]")
            .await;
        (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
    };
    let span_min = (to - from) / 60_000.0;
    assert!(
        (110.0..=125.0).contains(&span_min),
        "the axis spans {span_min} min; the readings span two hours"
    );
    assert_eq!(
        browser.eval("return location.hash").await,
        "#vehicle=XY-B0003"
    );

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
    assert_eq!(others, 3, "only the clicked alert changed");

    // The dispatcher switches to Chinese: the page, the rule and severity names change, and
    // the choice outlives a reload.
    browser.click("#lang option[value=\"zh-CN\"]").await;
    let heading = browser
        .wait_for(
            20,
            "the page in Chinese",
            "return document.documentElement.lang === 'zh-CN' \
             && document.querySelector('#alerts-panel h2').textContent",
        )
        .await;
    assert_eq!(heading, "未处理告警");
    let rules = browser
        .eval("return [...document.querySelectorAll('#alerts tbody td:nth-child(3)')].map((td) => td.textContent).sort()")
        .await;
    assert_eq!(rules, serde_json::json!(["氢量不足", "离线", "违规停车"]));
    assert_eq!(
        browser
            .eval("return localStorage.getItem('hyfleet.lang')")
            .await,
        "zh-CN"
    );
    // A reload asks the API again: the acknowledgement is not just on screen. (Another query
    // string: the same URL with only a fragment would not reload the page.)
    browser.goto(&svc.url("/?again#vehicle=XY-B0003")).await;
    browser
        .wait_for(
            20,
            "three open alerts after reload, still in Chinese",
            "return document.querySelectorAll('#alerts tbody tr').length === 3 \
             && document.querySelector('#alerts tbody tr.critical td:nth-child(4)').textContent === '严重'",
        )
        .await;
    // Back to English for the kept picture (the test machine may have no Chinese fonts).
    browser.click("#lang option[value=\"en\"]").await;
    browser
        .wait_for(
            20,
            "the chart after reload",
            "return Number(document.getElementById('chart').dataset.points || 0)",
        )
        .await;
    browser
        .wait_for(
            20,
            "the page in English",
            "return document.querySelector('#alerts-panel h2').textContent === 'Open alerts'",
        )
        .await;

    // The picture shows the whole service area.
    browser.click("#map-fit").await;
    browser
        .wait_for(
            20,
            "the map fitted",
            "return hyfleetMap.map.getZoom() <= 14",
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
