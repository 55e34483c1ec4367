use chrono::TimeZone;

use super::*;

fn bike(code: &str) -> VehicleRow {
    VehicleRow {
        code: code.into(),
        kind: VehicleKind::Bike,
        lat: 37.145_123_456,
        lon: 111.781_987_654,
        h2_g: Some(40.0),
        tank_g: 50.0,
        range_km: Some(48.0),
        km_per_g: 1.2,
        locked: Some(true),
        online: Some(true),
        last_ts: Some(Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap()),
        last_ride_end: None,
        safety_alert: false,
    }
}

fn zone(id: &str, kind: &str, props: Value, geometry: Value) -> ZoneRow {
    ZoneRow {
        id: id.into(),
        name: format!("zone {id}"),
        kind: kind.into(),
        properties: props,
        geometry,
    }
}

fn square(lon: f64, lat: f64, d: f64) -> Value {
    json!({"type": "Polygon", "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]]})
}

#[test]
fn vehicle_status_shows_parked_bikes_with_fuel_as_a_fraction_and_hides_rides_and_buses() {
    let ids = IdRotation::new(b"0123456789abcdef");
    let mut riding = bike("XY-B0002");
    riding.locked = Some(false);
    let mut bus = bike("XY-H0001");
    bus.kind = VehicleKind::Bus;
    let mut unknown_lock = bike("XY-B0003");
    unknown_lock.locked = None;
    unknown_lock.range_km = None;
    unknown_lock.h2_g = Some(10.0);
    let data = vehicle_status(&[bike("XY-B0001"), riding, bus, unknown_lock], &[], &ids);
    let v = data["vehicles"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0]["current_fuel_percent"], json!(0.8));
    assert_eq!(v[0]["current_range_meters"], json!(48000.0));
    assert_eq!(v[0]["lat"], json!(37.145123));
    assert_eq!(v[0]["vehicle_type_id"], "bike");
    assert_eq!(v[0]["is_disabled"], false);
    assert_eq!(v[0]["last_reported"], "2024-05-01T08:00:00Z");
    assert_eq!(v[0]["vehicle_id"], ids.public_id("XY-B0001", None));
    assert!(!v[0]["vehicle_id"].as_str().unwrap().contains("B0001"));
    // Without a predicted range, the vehicle's consumption ratio gives it.
    assert_eq!(v[1]["current_range_meters"], json!(12000.0));
    assert_eq!(v[1]["current_fuel_percent"], json!(0.2));
}

#[test]
fn offline_empty_or_unsafe_bikes_are_disabled_and_fuel_stays_in_0_to_1() {
    let ids = IdRotation::new(b"0123456789abcdef");
    let mut offline = bike("A");
    offline.online = Some(false);
    let mut empty = bike("B");
    empty.h2_g = Some(0.0);
    let mut unsafe_ = bike("C");
    unsafe_.safety_alert = true;
    let mut overfull = bike("D");
    overfull.h2_g = Some(60.0);
    let data = vehicle_status(&[offline, empty, unsafe_, overfull], &[], &ids);
    let v = data["vehicles"].as_array().unwrap();
    let disabled: Vec<bool> = v
        .iter()
        .map(|x| x["is_disabled"].as_bool().unwrap())
        .collect();
    assert_eq!(disabled, [true, true, true, false]);
    assert_eq!(v[3]["current_fuel_percent"], json!(1.0));
    assert_eq!(v[1]["current_fuel_percent"], json!(0.0));
}

#[test]
fn vehicle_types_are_hydrogen_with_ranges_from_the_profiles() {
    let data = vehicle_types(&Profiles::default(), "en");
    let t = data["vehicle_types"].as_array().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["vehicle_type_id"], "bike");
    assert_eq!(t[0]["form_factor"], "bicycle");
    assert_eq!(t[0]["propulsion_type"], "hydrogen_fuel_cell");
    assert_eq!(t[0]["max_range_meters"], json!(60000.0));
    assert_eq!(t[0]["max_permitted_speed"], json!(23));
    assert_eq!(t[1]["vehicle_type_id"], "bus");
    assert_eq!(t[1]["max_range_meters"], json!(350000.0));
}

#[test]
fn parking_areas_become_virtual_stations_with_their_area_and_a_point_inside() {
    let zones = [
        zone("P1", "parking", json!({}), square(111.78, 37.14, 0.001)),
        zone(
            "P2",
            "parking",
            json!({"radius_m": 30}),
            json!({"type": "Point", "coordinates": [111.79, 37.15]}),
        ),
        zone("SA", "service_area", json!({}), square(111.7, 37.1, 0.2)),
    ];
    let data = station_information(&super::super::stations::stations(&zones), "en");
    let s = data["stations"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["station_id"], "P1");
    assert_eq!(s[0]["is_virtual_station"], true);
    assert_eq!(s[0]["lat"], json!(37.1405));
    assert_eq!(s[0]["lon"], json!(111.7805));
    assert_eq!(s[0]["station_area"]["type"], "MultiPolygon");
    assert_eq!(
        s[0]["station_area"]["coordinates"][0],
        zones[0].geometry["coordinates"]
    );
    assert_eq!(s[0]["name"][0]["text"], "zone P1");
    // A point with a radius: a closed ring around it, about 30 m out.
    let ring = s[1]["station_area"]["coordinates"][0][0]
        .as_array()
        .unwrap();
    assert_eq!(ring.first(), ring.last());
    let east = ring[0][0].as_f64().unwrap() - 111.79;
    let metres = east * 111_320.0 * 37.15_f64.to_radians().cos();
    assert!((metres - 30.0).abs() < 0.5, "{metres}");
    assert!((s[1]["lat"].as_f64().unwrap() - 37.15).abs() < 1e-6);
}

#[test]
fn zone_kinds_map_to_rules_in_order_of_precedence() {
    let zones = [
        zone("SA01", "service_area", json!({}), square(111.7, 37.1, 0.2)),
        zone(
            "SL01",
            "slow",
            json!({"max_speed_kmh": 12.5}),
            square(111.75, 37.12, 0.01),
        ),
        zone("P01", "parking", json!({}), square(111.78, 37.14, 0.001)),
        zone(
            "NP01",
            "no_parking",
            json!({}),
            square(111.7801, 37.1401, 0.0002),
        ),
        zone(
            "ST01",
            "station",
            json!({"radius_m": 40}),
            json!({"type": "Point", "coordinates": [111.79, 37.15]}),
        ),
    ];
    let data = geofencing_zones(&zones, &Profiles::default(), "en");
    let f = data["geofencing_zones"]["features"].as_array().unwrap();
    let names: Vec<&str> = f
        .iter()
        .map(|x| x["properties"]["name"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["zone NP01", "zone P01", "zone SL01", "zone SA01"]);
    assert!(f.iter().all(|x| x["geometry"]["type"] == "MultiPolygon"));
    let rules = |i: usize| f[i]["properties"]["rules"].as_array().unwrap().clone();
    assert_eq!(rules(0)[0]["ride_end_allowed"], false);
    assert_eq!(rules(0)[0]["ride_through_allowed"], true);
    assert_eq!(rules(1)[0]["ride_end_allowed"], true);
    assert_eq!(rules(2)[0]["maximum_speed_kph"], json!(12));
    assert_eq!(rules(2)[0]["ride_end_allowed"], false);
    let sa = rules(3);
    assert_eq!(sa[0]["vehicle_type_ids"], json!(["bike"]));
    assert_eq!(sa[0]["maximum_speed_kph"], json!(23));
    assert_eq!(sa[0]["ride_end_allowed"], false);
    assert_eq!(sa[1]["vehicle_type_ids"], json!(["bus"]));
    assert_eq!(sa[1]["maximum_speed_kph"], json!(80));
    let global = &data["global_rules"][0];
    assert_eq!(global["ride_through_allowed"], false);
    assert_eq!(global["ride_end_allowed"], false);
}

#[test]
fn discovery_lists_every_feed_under_the_base() {
    let d = discovery("https://fleet.example.cn/gbfs/");
    let feeds = d["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), FEEDS.len());
    assert_eq!(feeds[2]["name"], "vehicle_status");
    assert_eq!(
        feeds[2]["url"],
        "https://fleet.example.cn/gbfs/vehicle_status.json"
    );
    let e = envelope(d, 60, Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap());
    assert_eq!(e["version"], "3.0");
    assert_eq!(e["last_updated"], "2024-05-01T08:00:00Z");
}

#[test]
fn a_station_area_excludes_the_no_parking_lane_across_it_and_counts_bikes_outside_it() {
    use super::super::stations::{station_status, stations};
    // A 100 m parking area with a lane 0.00006° (≈ 5 m) wide across its middle, north-south.
    let lane = json!({"type": "Polygon", "coordinates": [[[111.78047, 37.1399], [111.78053, 37.1399],
        [111.78053, 37.1411], [111.78047, 37.1411], [111.78047, 37.1399]]]});
    let zones = [
        zone(
            "P1",
            "parking",
            json!({"kinds": ["bike"]}),
            square(111.78, 37.14, 0.001),
        ),
        zone("NP", "no_parking", json!({"kinds": ["bike"]}), lane),
        zone("P2", "parking", json!({}), square(111.79, 37.14, 0.001)),
        zone(
            "DEPOT",
            "parking",
            json!({"kinds": ["bus"]}),
            square(111.8, 37.14, 0.001),
        ),
        zone(
            "NPBUS",
            "no_parking",
            json!({"kinds": ["bus"]}),
            square(111.79, 37.14, 0.001),
        ),
    ];
    let st = stations(&zones);
    assert_eq!(
        st.len(),
        2,
        "a bus-only no-parking zone cuts nothing out of a bike area; a bus depot is no station"
    );
    let p1 = &st[0];
    let in_lane = geo::Point::new(111.7805, 37.1405);
    let beside = geo::Point::new(111.7802, 37.1405);
    use geo::Contains as _;
    assert!(!p1.area.contains(&in_lane) && p1.area.contains(&beside));
    assert!(
        p1.area.contains(&geo::Point::new(p1.lon, p1.lat)),
        "its point is in what is left"
    );
    let info = station_information(&st, "en");
    assert_eq!(
        info["stations"][0]["station_area"]["coordinates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let mut in_area = bike("XY-B0001");
    (in_area.lat, in_area.lon) = (37.1405, 111.7802);
    let mut in_the_lane = bike("XY-B0002");
    (in_the_lane.lat, in_the_lane.lon) = (37.1405, 111.7805);
    let mut dead = bike("XY-B0003");
    (dead.lat, dead.lon, dead.h2_g) = (37.1404, 111.7802, Some(0.0));
    let now = Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap();
    let status = station_status(&st, &[in_area.clone(), in_the_lane.clone(), dead], now);
    let s = status["stations"].as_array().unwrap();
    assert_eq!(s.len(), 2, "a status for every station");
    assert_eq!(s[0]["station_id"], "P1");
    assert_eq!(s[0]["num_vehicles_available"], 1);
    assert_eq!(s[0]["num_vehicles_disabled"], 1);
    assert_eq!(
        s[0]["vehicle_types_available"],
        json!([{"vehicle_type_id": "bike", "count": 1}])
    );
    assert_eq!(s[0]["is_returning"], true);
    assert_eq!(s[0]["last_reported"], "2024-05-01T08:00:00Z");
    assert!(
        s[0].get("num_docks_available").is_none(),
        "virtual: no docks"
    );
    assert_eq!(s[1]["num_vehicles_available"], 0);
    let ids = IdRotation::new(b"0123456789abcdef");
    let v = vehicle_status(&[in_area, in_the_lane], &st, &ids);
    assert_eq!(v["vehicles"][0]["station_id"], "P1");
    assert!(v["vehicles"][1].get("station_id").is_none());
}

#[test]
fn zones_scoped_to_a_kind_bind_only_its_vehicle_type() {
    let zones = [
        zone(
            "SA02",
            "service_area",
            json!({"kinds": ["bus"]}),
            square(111.8, 37.0, 0.1),
        ),
        zone(
            "SL01",
            "slow",
            json!({"max_speed_kmh": 10, "kinds": ["bike"]}),
            square(111.75, 37.12, 0.01),
        ),
        zone(
            "P01",
            "parking",
            json!({"kinds": ["bike"]}),
            square(111.78, 37.14, 0.001),
        ),
    ];
    let data = geofencing_zones(&zones, &Profiles::default(), "en");
    let f = data["geofencing_zones"]["features"].as_array().unwrap();
    let rules = |i: usize| f[i]["properties"]["rules"].as_array().unwrap().clone();
    assert_eq!(rules(0)[0]["vehicle_type_ids"], json!(["bike"]), "parking");
    assert_eq!(rules(1)[0]["vehicle_type_ids"], json!(["bike"]), "slow");
    let corridor = rules(2);
    assert_eq!(corridor.len(), 1, "{corridor:?}");
    assert_eq!(corridor[0]["vehicle_type_ids"], json!(["bus"]));
    assert_eq!(corridor[0]["ride_through_allowed"], true);
}
