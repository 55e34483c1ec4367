use super::*;
use chrono::TimeZone;

fn decoder() -> Decoder {
    Decoder::new(&Config::default())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 10, 0, 0).unwrap()
}

const T: &str = "hyfleet/v1/bike/XY-B0001/telemetry";

fn good() -> serde_json::Value {
    serde_json::json!({
        "ts": "2026-11-29T09:59:58Z", "seq": 7, "lat": 37.145, "lon": 111.781,
        "speed_kmh": 12.5, "h2_g": 31.2, "locked": false
    })
}

fn run(topic: &str, payload: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    decoder().decode(topic, payload, now(), &mut out);
    out
}

fn reason_of(topic: &str, payload: &[u8]) -> RejectReason {
    let out = run(topic, payload);
    assert!(out.readings.is_empty(), "unexpectedly accepted");
    assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
    out.rejects[0].reason
}

fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v = good();
    v[field] = value;
    serde_json::to_vec(&v).unwrap()
}

fn without(field: &str) -> Vec<u8> {
    let mut v = good();
    v.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn a_full_reading_keeps_every_field() {
    let payload = serde_json::json!({
        "vehicle_id": "XY-B0001", "ts": 1_795_946_398_000_i64, "seq": 4_000_000_000_u32,
        "lat": 37.1451234, "lon": 111.7812345, "hdop": 0.9, "speed_kmh": 18.5, "heading_deg": 270.0,
        "h2_g": 44.5, "h2_pressure_bar": 12.0, "tank_temp_c": 21.5, "fc_power_w": 250.0,
        "fc_temp_c": 48.0, "batt_v": 12.6, "odo_km": 1234.567, "locked": false,
        "faults": ["E12"], "firmware": "1.4.2", "cell": {"rssi": -71}
    });
    let out = run(T, &serde_json::to_vec(&payload).unwrap());
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    let r = &out.readings[0];
    assert_eq!(r.ts, Utc.timestamp_millis_opt(1_795_946_398_000).unwrap());
    assert_eq!(r.seq, Some(4_000_000_000));
    assert_eq!((r.lat, r.lon), (37.1451234, 111.7812345));
    assert_eq!(r.odo_km, Some(1234.567));
    assert_eq!(r.faults, vec!["E12".to_owned()]);
    let extra = r.extra.as_ref().unwrap();
    assert_eq!(extra["firmware"], "1.4.2");
    assert_eq!(extra["cell"]["rssi"], -71);
}

#[test]
fn each_reject_reason() {
    use RejectReason::*;
    assert_eq!(reason_of(T, b"{\"ts\": "), MalformedJson);
    assert_eq!(reason_of(T, b"not json"), MalformedJson);
    assert_eq!(reason_of(T, b"{\"ts\":\"\xff\xfe\"}"), MalformedJson);
    assert_eq!(reason_of(T, &without("lat")), Schema);
    assert_eq!(reason_of(T, &without("ts")), Schema);
    assert_eq!(reason_of(T, &with("speed_kmh", "fast".into())), Schema);
    assert_eq!(reason_of(T, &with("seq", (-1).into())), Schema);
    assert_eq!(reason_of(T, &with("ts", "yesterday".into())), Schema);
    assert_eq!(reason_of(T, &with("locked", 1.into())), Schema);
    assert_eq!(reason_of(T, b"42"), Schema);
    assert_eq!(reason_of(T, &vec![b' '; 70_000]), TooLarge);
    assert_eq!(reason_of(T, &with("lat", 91.0.into())), OutOfRange);
    assert_eq!(reason_of(T, &with("lon", (-180.5).into())), OutOfRange);
    assert_eq!(reason_of(T, &with("speed_kmh", (-1.0).into())), OutOfRange);
    assert_eq!(reason_of(T, &with("speed_kmh", 251.0.into())), OutOfRange);
    assert_eq!(reason_of(T, &with("h2_g", 60.5.into())), OutOfRange);
    assert_eq!(reason_of(T, &with("h2_g", 1e39.into())), OutOfRange);
    assert_eq!(
        reason_of(T, &with("ts", "2026-11-29T10:05:01Z".into())),
        ClockSkew
    );
    assert_eq!(
        reason_of(T, &with("ts", "2026-10-01T00:00:00Z".into())),
        ClockSkew
    );
    assert_eq!(
        reason_of(T, &with("vehicle_id", "XY-B0002".into())),
        IdMismatch
    );
    assert_eq!(
        reason_of("hyfleet/v1/car/XY-B0001/telemetry", b"{}"),
        BadTopic
    );
    assert_eq!(reason_of("hyfleet/v1/bike/XY-B0001/what", b"{}"), BadTopic);
}

#[test]
fn a_bus_tank_is_larger() {
    let out = run(
        "hyfleet/v1/bus/XY-H0001/telemetry",
        &with("h2_g", 20_000.0.into()),
    );
    assert_eq!(out.readings.len(), 1);
}

#[test]
fn backlog_keeps_good_records_and_rejects_bad_ones() {
    let mut a = good();
    a["seq"] = 1.into();
    let mut b = good();
    b["lat"] = 200.0.into();
    let mut c = good();
    c["seq"] = 3.into();
    let payload = serde_json::to_vec(&serde_json::json!([a, b, "nonsense", c])).unwrap();
    let out = run(T, &payload);
    assert_eq!(
        out.readings.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![Some(1), Some(3)]
    );
    let reasons: Vec<_> = out.rejects.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![RejectReason::OutOfRange, RejectReason::Schema]
    );
    assert!(out.rejects[0].detail.starts_with("backlog record 1"));
}

#[test]
fn backlog_over_max_batch_is_refused_whole() {
    let items = vec![serde_json::json!({}); 1001];
    assert_eq!(
        reason_of(T, &serde_json::to_vec(&items).unwrap()),
        RejectReason::Schema
    );
    assert_eq!(reason_of(T, b"[]"), RejectReason::Schema);
    assert_eq!(reason_of(T, b"[{\"ts\":1},"), RejectReason::MalformedJson);
}

#[test]
fn reject_keeps_at_most_4_kib_of_payload() {
    let mut v = good();
    v["lat"] = 100.0.into();
    v["pad"] = "x".repeat(10_000).into();
    let out = run(T, &serde_json::to_vec(&v).unwrap());
    assert_eq!(out.rejects[0].payload.len(), 4096);
}

#[test]
fn events_and_statuses() {
    let out = run(
        "hyfleet/v1/bike/XY-B0001/event",
        br#"{"ts":"2026-11-29T09:59:00Z","type":"refuel","h2_g_before":3.0,"h2_g_after":49.5,"station_id":"S1"}"#,
    );
    assert_eq!(out.events[0].event_type, EventType::Refuel);
    assert_eq!(out.events[0].body["station_id"], "S1");
    let r = reason_of(
        "hyfleet/v1/bike/XY-B0001/event",
        br#"{"ts":"2026-11-29T09:59:00Z","type":"refuel"}"#,
    );
    assert_eq!(r, RejectReason::Schema);
    let r = reason_of(
        "hyfleet/v1/bike/XY-B0001/event",
        br#"{"ts":"2026-11-29T09:59:00Z","type":"wheelie"}"#,
    );
    assert_eq!(r, RejectReason::Schema);
    let out = run("hyfleet/v1/bike/XY-B0001/status", b"offline");
    assert!(!out.statuses[0].online);
    let out = run("hyfleet/v1/bike/XY-B0001/status", b"");
    assert!(out.is_empty());
    assert_eq!(
        reason_of("hyfleet/v1/bike/XY-B0001/status", b"maybe"),
        RejectReason::Schema
    );
    assert!(run("hyfleet/v1/bike/XY-B0001/cmd", b"{}").is_empty());
}

#[test]
fn gcj02_positions_are_converted() {
    let mut config = Config::default();
    config.geo.crs = Crs::Gcj02;
    let d = Decoder::new(&config);
    let mut out = Decoded::default();
    d.decode(T, &serde_json::to_vec(&good()).unwrap(), now(), &mut out);
    let r = &out.readings[0];
    assert!((r.lat - 37.145).abs() > 1e-4 || (r.lon - 111.781).abs() > 1e-4);
}

#[test]
fn timestamps_keep_what_the_store_keeps() {
    let out = run(T, &with("ts", "2026-11-29T09:59:58.123456789Z".into()));
    assert_eq!(out.readings[0].ts.timestamp_subsec_nanos(), 123_456_000);
}

/// The published JSON Schema and the decoder agree on what a reading must carry.
#[test]
fn telemetry_schema_matches_the_decoder() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/telemetry.schema.json")).unwrap();
    let reading = &schema["$defs"]["reading"];
    let mut required: Vec<&str> = reading["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    for field in &required {
        assert_eq!(
            reason_of(T, &without(field)),
            RejectReason::Schema,
            "{field}"
        );
    }
    let mut optional: Vec<String> = good().as_object().unwrap().keys().cloned().collect();
    optional.retain(|k| !required.contains(&k.as_str()));
    for field in optional {
        let out = run(T, &without(&field));
        assert_eq!(out.readings.len(), 1, "{field} is optional in the schema");
    }
    let props = reading["properties"].as_object().unwrap();
    assert_eq!(props["lat"]["maximum"], 90);
    assert_eq!(props["speed_kmh"]["maximum"], 250);
    assert_eq!(
        schema["oneOf"][1]["maxItems"],
        Config::default().ingest.max_batch
    );
}

#[test]
fn no_refusal_carries_a_nul_the_store_would_refuse() {
    let cases: [(&str, &[u8]); 3] = [
        ("hyfleet/v1/bike/XY-B0001/status", "on\u{0}line".as_bytes()),
        (
            "hyfleet/v1/bike/XY-B0001/event",
            br#"{"ts":"2026-11-29T09:59:58Z","type":"ri\u0000de"}"#,
        ),
        (T, &with("faults", serde_json::json!(["E\u{0}"]))),
    ];
    for (topic, payload) in cases {
        let out = run(topic, payload);
        assert_eq!(out.rejects.len(), 1, "{topic}");
        let r = &out.rejects[0];
        assert_eq!(r.reason, RejectReason::Schema, "{topic}: {}", r.detail);
        assert!(!r.detail.contains('\0') && !r.topic.contains('\0'), "{r:?}");
    }
}
