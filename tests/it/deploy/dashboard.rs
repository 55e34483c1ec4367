//! Every SQL query of the shipped Grafana dashboard, with Grafana's macros expanded the way its
//! PostgreSQL data source expands them, runs against hyfleet's real schema and finds the data.

use serde_json::Value;

use super::repo;
use crate::support::TestDb;

/// `(title, sql)` of every panel target and template variable in the dashboard.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let sql = target["rawSql"].as_str().expect("every target is raw SQL");
            out.push((panel["title"].as_str().unwrap().to_owned(), sql.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            let sql = var["query"].as_str().expect("a query variable's SQL");
            out.push((
                format!("${}", var["name"].as_str().unwrap()),
                sql.to_owned(),
            ));
        }
    }
    out
}

/// The arguments of each `name(...)` call in `sql`, with the call replaced by `f(args)`.
fn expand(sql: &str, name: &str, f: impl Fn(&[&str]) -> String) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find(name) {
        out.push_str(&rest[..at]);
        let args_start = at + name.len();
        assert!(
            rest[args_start..].starts_with('('),
            "{name} without arguments in {sql}"
        );
        let close = rest[args_start..].find(')').expect("closing parenthesis") + args_start;
        let args: Vec<&str> = rest[args_start + 1..close]
            .split(',')
            .map(str::trim)
            .collect();
        out.push_str(&f(&args));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Grafana's PostgreSQL macros and the dashboard's variables, for a one-day range.
fn grafana_to_sql(sql: &str, vehicle: &str) -> String {
    let sql = sql.replace("$__interval", "'1m'");
    let sql = expand(&sql, "$__timeGroupAlias", |a| {
        format!("floor(extract(epoch from {})/60)*60 AS \"time\"", a[0])
    });
    let sql = expand(&sql, "$__timeFilter", |a| {
        format!("{} BETWEEN now() - interval '1 day' AND now()", a[0])
    });
    let sql = sql.replace("$__timeFrom()", "(now() - interval '1 day')");
    let sql = sql.replace("$__timeTo()", "now()");
    let sql = sql.replace("$vehicle", vehicle);
    assert!(
        !sql.contains('$'),
        "a macro or variable the test does not know: {sql}"
    );
    sql
}

const DATA: &str = "
INSERT INTO vehicles (code, kind, tank_g, speed_cap_kmh, km_per_g,
                      last_ts, last_seen, lat, lon, h2_g, range_km, locked, online)
VALUES ('XY-B0001', 'bike', 50, 23, 1.2, now(), now(), 37.145, 111.781, 7.5, 9, false, true),
       ('XY-B0002', 'bike', 50, 23, 1.2, now(), now(), 37.146, 111.782, 42, 50.4, true, true),
       ('XY-H0001', 'bus', 25000, 80, 0.014, now(), now(), 37.03, 111.91, 18000, 252, NULL, true);
INSERT INTO telemetry (ts, seq, lat, lon, vehicle, speed_kmh, h2_g)
SELECT now() - make_interval(secs => s * 10), s, 37.145, 111.781,
       (SELECT id FROM vehicles WHERE code = 'XY-B0001'), 12, 7.5 + s * 0.01
FROM generate_series(0, 359) s;
INSERT INTO telemetry_1m (vehicle, bucket, readings, distance_km, h2_used_g, speed_min,
                          speed_max, speed_sum, h2_min, h2_max, h2_sum, last_ts, lat, lon)
SELECT (SELECT id FROM vehicles WHERE code = 'XY-B0001'),
       date_trunc('minute', now()) - make_interval(mins => m), 6, 0.2, 0.01,
       12, 12, 72, 7.5, 7.6, 45.3, now() - make_interval(mins => m), 37.145, 111.781
FROM generate_series(0, 59) m;
INSERT INTO alerts (vehicle_id, rule, state, severity, opened_at)
SELECT id, 'low_hydrogen', 'open', 'critical', now() - interval '5 minutes'
FROM vehicles WHERE code = 'XY-B0001';
INSERT INTO alerts (vehicle_id, rule, zone, state, severity, opened_at)
SELECT id, 'no_parking', 'z1', 'acknowledged', 'warning', now() - interval '3 minutes'
FROM vehicles WHERE code = 'XY-B0002';
INSERT INTO rejects (received_at, topic, vehicle, reason, detail, payload)
VALUES (now() - interval '2 minutes', 'hyfleet/v1/bike/XY-B0001/telemetry', 'XY-B0001',
        'malformed_json', 'EOF', '\\x7b'),
       (now() - interval '1 minute', 'hyfleet/v1/bike/XY-B0002/telemetry', 'XY-B0002',
        'out_of_range', 'lat 97', '\\x7b');
";

#[tokio::test]
async fn every_dashboard_query_runs_and_finds_the_data() {
    let text = std::fs::read_to_string(repo("deploy/grafana/dashboards/hyfleet.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "{} queries", queries.len());
    for needle in [
        "FROM vehicles",
        "FROM telemetry",
        "FROM alerts",
        "FROM rejects",
    ] {
        assert!(
            queries.iter().any(|(_, q)| q.contains(needle)),
            "no panel reads {needle}"
        );
    }

    let db = TestDb::new().await;
    let client = db.client().await;
    hyfleet::store::partitions::maintain(&client, 2, 1, chrono::Utc::now())
        .await
        .unwrap();
    client.batch_execute(DATA).await.unwrap();

    for (title, sql) in &queries {
        let sql = grafana_to_sql(sql, "XY-B0001");
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("panel `{title}`: {e}\n{sql}"));
        assert!(!rows.is_empty(), "panel `{title}` found no rows:\n{sql}");
        // A single count must count something: every fact it shows exists in the data.
        if rows.len() == 1 && rows[0].len() == 1 {
            let n: i64 = rows[0].get(0);
            assert!(n > 0, "panel `{title}` counts 0:\n{sql}");
        }
    }
}

#[test]
fn panels_use_the_provisioned_data_source() {
    let text = std::fs::read_to_string(repo("deploy/grafana/dashboards/hyfleet.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let datasource: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/provisioning/datasources/hyfleet.yml"))
            .unwrap(),
    )
    .unwrap();
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let kind = datasource["datasources"][0]["type"].as_str().unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], uid, "panel `{title}`");
        assert_eq!(panel["datasource"]["type"], kind, "panel `{title}`");
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], uid, "panel `{title}`");
        }
    }
    let ids: Vec<_> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "panel ids are unique");
}
