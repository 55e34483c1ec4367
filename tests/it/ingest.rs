use serde_json::json;

use crate::support::*;

/// Waits until the service has counted `n` duplicate readings: with them, every message
/// published before.
async fn duplicates_counted(svc: &InProcess, n: u32) {
    let line = format!("hyfleet_readings_duplicate_total {n}\n");
    eventually(30, &line, || async {
        let m = reqwest::get(svc.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains(&line).then_some(())
    })
    .await;
}

fn reading(seq: u32, ts: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    json!({
        "ts": ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "seq": seq, "lat": 37.145 + f64::from(seq) * 1e-5, "lon": 111.781, "speed_kmh": 14.5,
        "h2_g": 40.0 - seq as f32 * 0.01, "locked": false
    })
}

#[tokio::test]
async fn readings_arrive_intact_as_objects_and_backlogs() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let full = json!({
        "vehicle_id": "XY-B0001", "ts": now.timestamp_millis(), "seq": 1,
        "lat": 37.1451234, "lon": 111.7812345, "hdop": 0.8, "speed_kmh": 18.5, "heading_deg": 91.5,
        "h2_g": 44.25, "h2_pressure_bar": 11.5, "tank_temp_c": 22.0, "fc_power_w": 240.0,
        "fc_temp_c": 51.5, "batt_v": 12.7, "odo_km": 1523.25, "locked": false,
        "faults": ["E12", "W3"], "firmware": "2.1.0"
    });
    fw.publish(&format!("{root}/bike/XY-B0001/telemetry"), full.to_string())
        .await;
    let backlog: Vec<_> = (2..=6)
        .map(|s| reading(s, now - chrono::Duration::seconds(60 - i64::from(s))))
        .collect();
    fw.publish(
        &format!("{root}/bike/XY-B0001/telemetry"),
        json!(backlog).to_string(),
    )
    .await;
    fw.flush().await;

    let api = reqwest::Client::new();
    let url = svc.url(&format!(
        "/api/v1/vehicles/XY-B0001/telemetry?from={}",
        urlencode(&(now - chrono::Duration::minutes(5)).to_rfc3339())
    ));
    let items = eventually(20, "six readings", || async {
        let body: serde_json::Value = api
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let items = body["items"].as_array()?.clone();
        (items.len() == 6).then_some(items)
    })
    .await;
    let first = items.iter().find(|i| i["seq"] == 1).unwrap();
    for field in [
        "lat",
        "lon",
        "hdop",
        "speed_kmh",
        "heading_deg",
        "h2_g",
        "h2_pressure_bar",
        "tank_temp_c",
        "fc_power_w",
        "fc_temp_c",
        "batt_v",
        "odo_km",
        "locked",
        "faults",
    ] {
        assert_eq!(first[field], full[field], "field {field}");
    }
    assert_eq!(first["extra"]["firmware"], "2.1.0");
    let ts = chrono::DateTime::parse_from_rfc3339(first["ts"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp_millis(), now.timestamp_millis());

    // The vehicle was registered on first sight with the bike profile, and its latest state is
    // the newest reading.
    let v: serde_json::Value = api
        .get(svc.url("/api/v1/vehicles/XY-B0001"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["kind"], "bike");
    assert_eq!(v["tank_g"], 50.0);
    assert_eq!(v["h2_g"], 44.25);
    let range = v["range_km"].as_f64().unwrap();
    assert!((range - 44.25 * 1.2).abs() < 0.01, "range {range}");
    svc.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn every_reject_reason_is_recorded_and_good_messages_around_are_kept() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let t = format!("{root}/bike/XY-B0002/telemetry");
    let mut seq = 0;
    let good = |fw_seq: &mut u32| {
        *fw_seq += 1;
        reading(
            *fw_seq,
            now - chrono::Duration::seconds(100 - i64::from(*fw_seq)),
        )
        .to_string()
    };
    let bad: Vec<(String, Vec<u8>)> = vec![
        (t.clone(), b"{\"ts\": 1, \"lat\":".to_vec()),
        (t.clone(), json!({"ts": now.to_rfc3339(), "lat": 37.1}).to_string().into_bytes()),
        (t.clone(), vec![b'x'; 70_000]),
        (t.clone(), json!({"ts": now.to_rfc3339(), "lat": 97.1, "lon": 111.0, "speed_kmh": 1, "h2_g": 3}).to_string().into_bytes()),
        (t.clone(), json!({"ts": (now + chrono::Duration::hours(1)).to_rfc3339(), "lat": 37.1, "lon": 111.0, "speed_kmh": 1, "h2_g": 3}).to_string().into_bytes()),
        (t.clone(), json!({"vehicle_id": "XY-B0999", "ts": now.to_rfc3339(), "lat": 37.1, "lon": 111.0, "speed_kmh": 1, "h2_g": 3}).to_string().into_bytes()),
        (format!("{root}/scooter/XY-B0002/telemetry"), b"{}".to_vec()),
    ];
    for (topic, payload) in &bad {
        fw.publish(&t, good(&mut seq)).await;
        fw.publish(topic, payload.clone()).await;
    }
    // A backlog with one bad record among good ones.
    let mut records: Vec<serde_json::Value> = (0..3)
        .map(|_| serde_json::from_str(&good(&mut seq)).unwrap())
        .collect();
    records.insert(
        1,
        json!({"ts": now.to_rfc3339(), "lat": 37.1, "lon": 111.0, "speed_kmh": -3, "h2_g": 3}),
    );
    fw.publish(&t, json!(records).to_string()).await;
    fw.publish(&t, good(&mut seq)).await;
    fw.flush().await;

    let client = db.client().await;
    let expected_good = i64::from(seq);
    eventually(20, "good readings and rejects", || async {
        let stored = count(&client, "SELECT count(*) FROM telemetry").await;
        let rejects = count(&client, "SELECT count(*) FROM rejects").await;
        (stored == expected_good && rejects == 8).then_some(())
    })
    .await;
    // Batches commit on parallel writers, so ids need not follow arrival: compare as sets.
    let reasons: Vec<String> = client
        .query("SELECT reason FROM rejects ORDER BY reason", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        reasons,
        [
            "bad_topic",
            "clock_skew",
            "id_mismatch",
            "malformed_json",
            "out_of_range",
            "out_of_range",
            "schema",
            "too_large",
        ]
    );
    let row = client
        .query_one(
            "SELECT topic, detail, length(payload) FROM rejects WHERE reason = 'too_large'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), t);
    assert!(row.get::<_, String>(1).contains("70000"));
    assert_eq!(row.get::<_, i32>(2), 4096);

    // Counted per reason in the metrics, and listed by the API.
    let metrics = reqwest::get(svc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hyfleet_rejects_total{reason=\"out_of_range\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("hyfleet_rejects_total{reason=\"bad_topic\"} 1"));
    let listed: serde_json::Value = get(&svc.url("/api/v1/rejects?reason=clock_skew"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    svc.stop().await;
}

#[tokio::test]
async fn redelivered_messages_and_resent_backlogs_are_stored_once() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let t = format!("{root}/bus/XY-H0001/telemetry");
    let one = reading(1, now).to_string();
    fw.publish(&t, one.clone()).await;
    fw.publish(&t, one).await;
    let backlog: Vec<_> = (2..=20)
        .map(|s| reading(s, now - chrono::Duration::seconds(i64::from(s))))
        .collect();
    let backlog = json!(backlog).to_string();
    fw.publish(&t, backlog.clone()).await;
    fw.publish(&t, backlog).await;
    // Readings without seq are identified by time alone.
    let mut no_seq = reading(0, now - chrono::Duration::seconds(30));
    no_seq.as_object_mut().unwrap().remove("seq");
    fw.publish(&t, no_seq.to_string()).await;
    fw.publish(&t, no_seq.to_string()).await;
    fw.flush().await;
    let client = db.client().await;
    duplicates_counted(&svc, 21).await;
    assert_eq!(count(&client, "SELECT count(*) FROM telemetry").await, 21);
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT (vehicle, ts, seq)) FROM telemetry"
        )
        .await,
        21
    );
    svc.stop().await;
}

/// A day old enough is packed per vehicle and hour: the API reads it back exactly as before,
/// a reading of that day delivered again is not stored twice, and a late new one is stored and
/// merged into its hour's pack by the next round.
#[tokio::test]
async fn old_days_are_packed_read_back_unchanged_and_never_stored_twice() {
    let db = TestDb::new().await;
    let mut config = config(&db, &BROKER);
    // The test packs, not the service's upkeep (which packs once at start).
    config.store.pack_after_days = 30;
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let start = (now - chrono::Duration::days(3))
        .date_naive()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc();
    let at = |seq: u32| start + chrono::Duration::seconds(i64::from(seq) * 30);
    let t = format!("{root}/bike/XY-B0001/telemetry");
    // 200 readings over 100 minutes (two hours' packs); one with faults and a field the
    // contract does not know, one without seq.
    let mut backlog: Vec<_> = (1..=200).map(|s| reading(s, at(s))).collect();
    backlog[9]["faults"] = json!(["E12", "W3"]);
    backlog[9]["firmware"] = json!("2.1.0");
    backlog[19].as_object_mut().unwrap().remove("seq");
    fw.publish(&t, json!(backlog).to_string()).await;
    fw.flush().await;
    let client = db.client().await;
    let stored = "SELECT count(*) FROM telemetry";
    eventually(20, "the backlog stored", || async {
        (count(&client, stored).await == 200).then_some(())
    })
    .await;

    let range = format!(
        "from={}&to={}",
        start.format("%Y-%m-%dT%H:%M:%SZ"),
        (start + chrono::Duration::hours(3)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    let views = [
        format!("/api/v1/vehicles/XY-B0001/telemetry?{range}&limit=1000"),
        format!("/api/v1/vehicles/XY-B0001/telemetry?{range}&every=30s"),
        format!("/api/v1/vehicles/XY-B0001/telemetry?{range}&format=csv"),
        format!("/api/v1/vehicles/XY-B0001/track?{range}"),
    ];
    let read_all = || async {
        let mut out = Vec::new();
        for v in &views {
            let r = get(&svc.url(v)).await.unwrap();
            assert_eq!(r.status(), 200, "{v}");
            out.push(r.text().await.unwrap());
        }
        out
    };
    let before = read_all().await;
    assert!(before[0].contains("E12") && before[0].contains("2.1.0"));

    let mut packer = db.client().await;
    let pack = hyfleet::store::partitions::pack;
    assert_eq!(
        pack(&mut packer, now, 4).await.unwrap(),
        (0, 0),
        "not old enough"
    );
    assert_eq!(pack(&mut packer, now, 1).await.unwrap(), (1, 200));
    assert_eq!(count(&client, stored).await, 0);
    let packed = "SELECT sum(readings)::int8 FROM telemetry_packed";
    assert_eq!(count(&client, packed).await, 200);
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry_packed").await,
        2
    );
    assert_eq!(
        read_all().await,
        before,
        "the API reads packs as it read rows"
    );
    assert_eq!(
        pack(&mut packer, now, 1).await.unwrap(),
        (0, 0),
        "packed once"
    );

    // Everything again, and one reading the store has not seen.
    backlog.push(reading(201, at(201)));
    fw.publish(&t, json!(backlog).to_string()).await;
    fw.flush().await;
    duplicates_counted(&svc, 200).await;
    assert_eq!(count(&client, stored).await, 1, "the new reading stored");
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry_all").await,
        201
    );
    assert_eq!(pack(&mut packer, now, 1).await.unwrap(), (1, 1));
    assert_eq!(count(&client, packed).await, 201);
    let r = get(&svc.url(&views[0])).await.unwrap();
    let page: serde_json::Value = r.json().await.unwrap();
    let times: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ts"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 201);
    assert!(times.windows(2).all(|w| w[0] < w[1]), "in time order");
    svc.stop().await;
}

/// Packing runs while late readings of the same day stream in, many of them twice: writers and
/// packer take turns (an advisory lock), so at the end every reading is there exactly once.
#[tokio::test]
async fn packing_while_late_readings_arrive_loses_none_and_stores_none_twice() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let now = chrono::Utc::now();
    let start = (now - chrono::Duration::days(3))
        .date_naive()
        .and_hms_opt(6, 0, 0)
        .unwrap()
        .and_utc();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let packer = {
        let stop = stop.clone();
        let mut client = db.client().await;
        tokio::spawn(async move {
            let mut moved = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                moved += hyfleet::store::partitions::pack(&mut client, now, 1)
                    .await
                    .unwrap()
                    .1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            moved
        })
    };
    let mut fw = Publisher::connect(&BROKER).await;
    // 40 messages of 25 readings over three vehicles, each message sent twice, the second time
    // after the next one.
    let messages: Vec<(String, String)> = (0..40u32)
        .map(|m| {
            let vehicle = format!("XY-B{:04}", m % 3 + 1);
            let batch: Vec<_> = (1..=25)
                .map(|i| {
                    let seq = m * 25 + i;
                    reading(seq, start + chrono::Duration::seconds(i64::from(seq) * 10))
                })
                .collect();
            (
                format!("{root}/bike/{vehicle}/telemetry"),
                json!(batch).to_string(),
            )
        })
        .collect();
    for (i, (topic, payload)) in messages.iter().enumerate() {
        fw.publish(topic, payload.clone()).await;
        if i > 0 {
            let (topic, payload) = &messages[i - 1];
            fw.publish(topic, payload.clone()).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (topic, payload) = messages.last().unwrap();
    fw.publish(topic, payload.clone()).await;
    fw.flush().await;
    let client = db.client().await;
    duplicates_counted(&svc, 1000).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved = packer.await.unwrap();
    let mut last = db.client().await;
    let (_, rest) = hyfleet::store::partitions::pack(&mut last, now, 1)
        .await
        .unwrap();
    // The service's own upkeep packs too (once, at start): the test's packer moved most.
    assert!(moved + rest > 0 && moved + rest <= 1000, "{moved} + {rest}");
    assert_eq!(count(&client, "SELECT count(*) FROM telemetry").await, 0);
    assert_eq!(
        count(&client, "SELECT sum(readings)::int8 FROM telemetry_packed").await,
        1000
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT (vehicle, ts, seq)) FROM telemetry_all"
        )
        .await,
        1000
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry_all").await,
        1000
    );
    svc.stop().await;
}

/// Yesterday's partition, filled as a fleet fills it (every vehicle's readings interleaved),
/// gets its unique index rebuilt by the upkeep, once: smaller, every reading still there and
/// still unique.
#[tokio::test]
async fn closed_partitions_have_their_index_compacted_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let now = chrono::Utc::now();
    hyfleet::store::partitions::maintain(&client, 3, 1, now)
        .await
        .unwrap();
    let first = hyfleet::store::partitions::compact(&client, now)
        .await
        .unwrap();
    assert_eq!(first, 0, "nothing in the past to compact yet");
    let yesterday = (now - chrono::Duration::days(1)).date_naive();
    client
        .execute(
            "INSERT INTO telemetry (ts, seq, lat, lon, vehicle, speed_kmh, h2_g)
             SELECT $1::date + make_interval(secs => s), s, 37.14, 111.78, v, 10, 20
             FROM generate_series(1, 300) s, generate_series(1, 300) v ORDER BY s, v",
            &[&yesterday],
        )
        .await
        .unwrap();
    let partition = format!("telemetry_{}", yesterday.format("%Y%m%d"));
    let index_size = || {
        let sql = format!(
            "SELECT sum(pg_relation_size(indexrelid))::int8 FROM pg_index \
             WHERE indrelid = '{partition}'::regclass"
        );
        let client = &client;
        async move { count(client, &sql).await }
    };
    let before = index_size().await;

    let compacted = hyfleet::store::partitions::compact(&client, now)
        .await
        .unwrap();
    assert_eq!(
        compacted, 1,
        "yesterday's; the empty ones have nothing to pack"
    );
    let after = index_size().await;
    assert!(
        (after as f64) < before as f64 * 0.8,
        "index {before} → {after} bytes"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry").await,
        90_000
    );
    let again = hyfleet::store::partitions::compact(&client, now)
        .await
        .unwrap();
    assert_eq!(again, 0, "compacted once");
    // The rebuilt index still refuses a reading stored twice.
    let dup = client
        .execute(
            "INSERT INTO telemetry (ts, seq, lat, lon, vehicle, speed_kmh, h2_g)
             VALUES ($1::date + interval '1 second', 1, 37.14, 111.78, 1, 10, 20)",
            &[&yesterday],
        )
        .await;
    assert!(dup.is_err(), "duplicate accepted");
}

/// Text PostgreSQL cannot store (U+0000 in a fault code, in an unknown field, in an event) is
/// refused at the door as `schema`: it never reaches a batch, where it would fail every retry
/// and stall ingest behind it.
#[tokio::test]
async fn text_the_store_cannot_hold_is_rejected_and_ingest_goes_on() {
    let db = TestDb::new().await;
    let config = config(&db, &BROKER);
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let t = format!("{root}/bike/XY-B0003/telemetry");
    let at = |s: u32| now - chrono::Duration::seconds(100 - i64::from(s));
    let mut nul_fault = reading(2, at(2));
    nul_fault["faults"] = json!(["E\u{0}1"]);
    let mut nul_extra = reading(3, at(3));
    nul_extra["firmware"] = json!({"build": "2.1\u{0}"});
    fw.publish(&t, reading(1, at(1)).to_string()).await;
    fw.publish(&t, nul_fault.to_string()).await;
    fw.publish(&t, nul_extra.to_string()).await;
    fw.publish(
        &format!("{root}/bike/XY-B0003/event"),
        json!({"ts": at(4).to_rfc3339(), "type": "fault", "code": "E\u{0}"}).to_string(),
    )
    .await;
    fw.publish(&t, reading(5, at(5)).to_string()).await;
    fw.flush().await;
    let client = db.client().await;
    eventually(20, "the good readings stored and three rejects", || async {
        let stored = count(&client, "SELECT count(*) FROM telemetry").await;
        let rejects = count(
            &client,
            "SELECT count(*) FROM rejects WHERE reason = 'schema'",
        )
        .await;
        (stored == 2 && rejects == 3).then_some(())
    })
    .await;
    let details: Vec<String> = client
        .query("SELECT detail FROM rejects", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(details.iter().all(|d| d.contains("U+0000")), "{details:?}");
    svc.stop().await;
}

/// A reading the database itself refuses (a check the decoder does not know, here a trigger
/// raising a data exception for one seq) does not stall ingest: the batch is split until that
/// reading stands alone, it becomes a `schema` reject with the database's reason, and every
/// other reading of the batch and after it is stored.
#[tokio::test]
async fn a_reading_the_store_refuses_is_isolated_and_the_rest_stored() {
    let db = TestDb::new().await;
    let mut config = config(&db, &BROKER);
    config.ingest.batch_max_age_ms = 500;
    let root = config.mqtt.topic_root.clone();
    let svc = InProcess::start(config).await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.seq = 13 THEN
                 RAISE EXCEPTION 'seq 13 is cursed' USING ERRCODE = 'invalid_parameter_value';
             END IF; RETURN NEW; END $$;
             CREATE TRIGGER refuse_13 BEFORE INSERT ON telemetry
                 FOR EACH ROW EXECUTE FUNCTION refuse_13();",
        )
        .await
        .unwrap();
    let mut fw = Publisher::connect(&BROKER).await;
    let now = chrono::Utc::now();
    let t = format!("{root}/bike/XY-B0004/telemetry");
    for seq in 1..=60u32 {
        let ts = now - chrono::Duration::seconds(100 - i64::from(seq));
        fw.publish(&t, reading(seq, ts).to_string()).await;
    }
    fw.flush().await;
    eventually(30, "59 readings stored and one refused", || async {
        let stored = count(&client, "SELECT count(*) FROM telemetry").await;
        let refused = count(&client, "SELECT count(*) FROM rejects").await;
        (stored == 59 && refused == 1).then_some(())
    })
    .await;
    let row = client
        .query_one("SELECT reason, detail, topic FROM rejects", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "schema");
    assert!(row.get::<_, String>(1).contains("seq 13 is cursed"));
    assert!(row.get::<_, String>(2).ends_with("XY-B0004/telemetry"));
    assert_eq!(
        count(&client, "SELECT count(*) FROM telemetry WHERE seq = 13").await,
        0
    );
    svc.stop().await;
}
