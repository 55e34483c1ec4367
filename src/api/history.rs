//! A vehicle's past: telemetry (raw or in time buckets, JSON or CSV), its track as GeoJSON,
//! and its rides.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{P, Q};
use super::vehicles::{MAX_PAGE, Page, page_limit, vehicle_key};
use super::{AppState, Problem};
use crate::domain::as_sent;
use crate::store::queries::{TELEMETRY_COLUMNS, TelemetryPoint, telemetry_point};

fn time_param(
    name: &str,
    v: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, Problem> {
    match v {
        None => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Problem::bad_request(format!("`{name}`: `{s}` is not an RFC 3339 time ({e})"))
            }),
    }
}

/// `[from, to)`, by default the last hour.
fn range(from: Option<&str>, to: Option<&str>) -> Result<(DateTime<Utc>, DateTime<Utc>), Problem> {
    let to = time_param("to", to, Utc::now() + Duration::minutes(5))?;
    let from = time_param("from", from, to - Duration::hours(1))?;
    if from >= to {
        return Err(Problem::bad_request("`from` must be before `to`"));
    }
    Ok((from, to))
}

/// Raw readings are read and sorted row by row: a request over them spans at most
/// `api.max_raw_range_hours`, so that no request can make the database sort a vehicle's month.
fn check_raw_range(s: &AppState, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), Problem> {
    let hours = s.config.api.max_raw_range_hours;
    if to - from > Duration::hours(i64::from(hours)) {
        return Err(Problem::bad_request(format!(
            "`from` to `to` spans {:.1} h; raw readings are served over at most {hours} h per \
             request (api.max_raw_range_hours): ask in pieces, or in buckets of a minute or more",
            (to - from).num_seconds() as f64 / 3600.0
        )));
    }
    Ok(())
}

/// A bucketed request spans at most `api.max_buckets` buckets; buckets under a whole minute
/// are grouped from raw readings, so their range is also that of raw readings.
fn check_buckets(
    s: &AppState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    every_secs: i64,
) -> Result<(), Problem> {
    let max = i64::from(s.config.api.max_buckets);
    let n = ((to - from).num_seconds() + every_secs - 1) / every_secs;
    if n > max {
        return Err(Problem::bad_request(format!(
            "`from` to `to` in buckets of {every_secs} s is {n} buckets; at most {max} per \
             request (api.max_buckets): use wider buckets or a shorter range"
        )));
    }
    if every_secs % 60 != 0 {
        check_raw_range(s, from, to)?;
    }
    Ok(())
}

/// `30s`, `1m`, `15m`, `1h`, `1d`: between a second and a day.
fn parse_every(s: &str) -> Result<i64, Problem> {
    let bad = || {
        Problem::bad_request(format!(
            "every `{s}` is not like 30s, 1m, 1h or 1d (1s to 1d)"
        ))
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = s[..split].parse().map_err(|_| bad())?;
    let unit = match &s[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit).ok_or_else(bad)?;
    if !(1..=86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryParams {
    from: Option<String>,
    to: Option<String>,
    every: Option<String>,
    format: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// One time bucket of readings.
#[derive(Debug, Serialize)]
pub struct Bucket {
    pub ts: DateTime<Utc>,
    pub readings: i64,
    pub speed_min: f32,
    pub speed_avg: f64,
    pub speed_max: f32,
    pub h2_min: f32,
    pub h2_avg: f64,
    pub h2_max: f32,
    /// The last position in the bucket.
    pub lat: f64,
    pub lon: f64,
    pub odo_km: Option<f64>,
    /// Kilometres and grams of hydrogen since the previous reading, summed: from the rollups,
    /// so only for buckets of whole minutes (absent for shorter ones, read from raw rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_used_g: Option<f64>,
}

const CURSOR_SEP: char = '~';

/// A raw page ends after a reading identified by (ts, seq): the cursor carries both, so that
/// readings sharing a timestamp are neither repeated nor skipped.
fn raw_cursor(p: &TelemetryPoint) -> String {
    format!(
        "{}{CURSOR_SEP}{}",
        p.ts.to_rfc3339_opts(SecondsFormat::Micros, true),
        p.seq.map(|s| s.to_string()).unwrap_or_default()
    )
}

fn parse_raw_cursor(c: &str) -> Result<(DateTime<Utc>, i64), Problem> {
    let bad = || Problem::bad_request(format!("`after`: `{c}` is not a cursor from `next`"));
    let (ts, seq) = c.split_once(CURSOR_SEP).ok_or_else(bad)?;
    let ts = DateTime::parse_from_rfc3339(ts).map_err(|_| bad())?;
    let seq = if seq.is_empty() {
        -1
    } else {
        seq.parse().map_err(|_| bad())?
    };
    Ok((ts.with_timezone(&Utc), seq))
}

pub(super) async fn telemetry(
    State(s): State<AppState>,
    P(id): P<String>,
    Q(p): Q<TelemetryParams>,
) -> Result<Response, Problem> {
    let (from, to) = range(p.from.as_deref(), p.to.as_deref())?;
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return Err(Problem::bad_request(format!(
                "format `{f}` is not json or csv"
            )));
        }
    };
    let every = p.every.as_deref().map(parse_every).transpose()?;
    match every {
        None => check_raw_range(&s, from, to)?,
        Some(secs) => check_buckets(&s, from, to, secs)?,
    }
    let limit = page_limit(p.limit, MAX_PAGE)?;
    let client = s.pool.get().await?;
    let (vehicle, _) = vehicle_key(&client, &id).await?;
    match every {
        None => {
            let after = p.after.as_deref().map(parse_raw_cursor).transpose()?;
            let items = raw(&client, vehicle, from, to, after, limit).await?;
            let page = Page::new(items, limit, raw_cursor);
            Ok(if csv {
                raw_csv(&page)
            } else {
                Json(page).into_response()
            })
        }
        Some(secs) => {
            if p.after.is_some() {
                return Err(Problem::bad_request(
                    "bucketed pages continue with `from` set to `next`",
                ));
            }
            let items = buckets(&client, vehicle, from, to, secs, limit).await?;
            let page = Page::new(items, limit, |b: &Bucket| {
                (b.ts + Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Secs, true)
            });
            Ok(if csv {
                bucket_csv(&page)
            } else {
                Json(page).into_response()
            })
        }
    }
}

async fn raw(
    client: &tokio_postgres::Client,
    vehicle: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<TelemetryPoint>, tokio_postgres::Error> {
    let (after_ts, after_seq) = (after.map(|a| a.0), after.map(|a| a.1));
    let sql = format!(
        "SELECT {TELEMETRY_COLUMNS} FROM telemetry_between($1, $2, $3)
         WHERE ($4::timestamptz IS NULL OR (ts, COALESCE(seq, -1)) > ($4, $5::int8))
         ORDER BY ts, COALESCE(seq, -1) LIMIT $6"
    );
    let rows = client
        .query(&sql, &[&vehicle, &from, &to, &after_ts, &after_seq, &limit])
        .await?;
    Ok(rows.iter().map(telemetry_point).collect())
}

/// Buckets start at multiples of `every` from a local (Asia/Shanghai) midnight, so that daily
/// buckets are the operators' days; shorter ones are unaffected by the whole-hour offset.
/// Whole minutes and days come from the rollups (which outlive the raw data, and cost a row per
/// minute rather than per reading); a bucket of whole minutes counts from the minute `from`
/// falls in. Shorter buckets are grouped from raw rows.
async fn buckets(
    client: &tokio_postgres::Client,
    vehicle: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    every_secs: i64,
    limit: i64,
) -> Result<Vec<Bucket>, tokio_postgres::Error> {
    let rollup = if every_secs % 86_400 == 0 {
        Some(("telemetry_1d", 86_400.0))
    } else if every_secs % 60 == 0 {
        Some(("telemetry_1m", 60.0))
    } else {
        None
    };
    let every = every_secs as f64;
    let rows = match rollup {
        Some((table, unit)) => {
            let sql = format!(
                "SELECT date_bin(make_interval(secs => $4::float8), bucket, {ORIGIN}) AS b,
                        sum(readings)::int8, min(speed_min), sum(speed_sum) / sum(readings),
                        max(speed_max), min(h2_min), sum(h2_sum) / sum(readings), max(h2_max),
                        (array_agg(lat ORDER BY last_ts DESC))[1],
                        (array_agg(lon ORDER BY last_ts DESC))[1],
                        max(odo_km), sum(distance_km), sum(h2_used_g)
                 FROM {table}
                 WHERE vehicle = $1 AND bucket < $3
                   AND bucket >= date_bin(make_interval(secs => $6::float8), $2, {ORIGIN})
                 GROUP BY b ORDER BY b LIMIT $5"
            );
            client
                .query(&sql, &[&vehicle, &from, &to, &every, &limit, &unit])
                .await?
        }
        None => {
            let sql = format!(
                "SELECT date_bin(make_interval(secs => $4::float8), ts, {ORIGIN}) AS b,
                        count(*), min(speed_kmh), avg(speed_kmh), max(speed_kmh),
                        min(h2_g), avg(h2_g), max(h2_g),
                        (array_agg(lat ORDER BY ts DESC))[1], (array_agg(lon ORDER BY ts DESC))[1],
                        max(odo_km), NULL::float8, NULL::float8
                 FROM telemetry_between($1, $2, $3)
                 GROUP BY b ORDER BY b LIMIT $5"
            );
            client
                .query(&sql, &[&vehicle, &from, &to, &every, &limit])
                .await?
        }
    };
    // Averages and sums of `real` readings carry no more precision than the readings did.
    let f32_precision = |x: f64| as_sent(x as f32);
    Ok(rows
        .iter()
        .map(|r| Bucket {
            ts: r.get(0),
            readings: r.get(1),
            speed_min: r.get(2),
            speed_avg: f32_precision(r.get(3)),
            speed_max: r.get(4),
            h2_min: r.get(5),
            h2_avg: f32_precision(r.get(6)),
            h2_max: r.get(7),
            lat: r.get(8),
            lon: r.get(9),
            odo_km: r.get(10),
            distance_km: r.get(11),
            h2_used_g: r.get::<_, Option<f64>>(12).map(f32_precision),
        })
        .collect())
}

/// Local midnight (Asia/Shanghai) that buckets are counted from.
const ORIGIN: &str = "timestamptz '2000-01-01 00:00:00+08'";

/// A CSV body; the cursor of the next page travels in the `Hyfleet-Next` header.
fn csv_response(body: String, next: Option<&String>) -> Response {
    let mut res = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
    if let Some(n) = next.and_then(|n| n.parse().ok()) {
        res.headers_mut().insert("hyfleet-next", n);
    }
    res
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, or a tab or carriage
/// return before one) is prefixed with `'`, which makes it text (OWASP, CSV injection). Only
/// text from outside goes through here: the numbers are written by us and cannot be formulas.
fn spreadsheet_text(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

fn raw_csv(page: &Page<TelemetryPoint, String>) -> Response {
    let mut out = String::from(
        "ts,seq,lat,lon,speed_kmh,h2_g,hdop,heading_deg,h2_pressure_bar,tank_temp_c,\
         fc_power_w,fc_temp_c,batt_v,odo_km,locked,faults\n",
    );
    for p in &page.items {
        // Fault codes come from firmware: defused as text, quoted, quotes inside doubled.
        let faults = spreadsheet_text(&p.faults.join(" ")).replace('"', "\"\"");
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{faults}\"\n",
            p.ts.to_rfc3339_opts(SecondsFormat::Millis, true),
            opt(p.seq),
            p.lat,
            p.lon,
            p.speed_kmh,
            p.h2_g,
            opt(p.hdop),
            opt(p.heading_deg),
            opt(p.h2_pressure_bar),
            opt(p.tank_temp_c),
            opt(p.fc_power_w),
            opt(p.fc_temp_c),
            opt(p.batt_v),
            opt(p.odo_km),
            opt(p.locked),
        ));
    }
    csv_response(out, page.next.as_ref())
}

fn bucket_csv(page: &Page<Bucket, String>) -> Response {
    let mut out = String::from(
        "ts,readings,speed_min,speed_avg,speed_max,h2_min,h2_avg,h2_max,lat,lon,odo_km,\
         distance_km,h2_used_g\n",
    );
    for b in &page.items {
        out.push_str(&format!(
            "{},{},{},{:.3},{},{},{:.3},{},{},{},{},{},{}\n",
            b.ts.to_rfc3339_opts(SecondsFormat::Secs, true),
            b.readings,
            b.speed_min,
            b.speed_avg,
            b.speed_max,
            b.h2_min,
            b.h2_avg,
            b.h2_max,
            b.lat,
            b.lon,
            opt(b.odo_km),
            opt(b.distance_km),
            opt(b.h2_used_g),
        ));
    }
    csv_response(out, page.next.as_ref())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrackParams {
    from: Option<String>,
    to: Option<String>,
}

/// Points in one track at most; a longer period is asked for in pieces or in buckets.
const MAX_TRACK_POINTS: i64 = 20_000;

pub(super) async fn track(
    State(s): State<AppState>,
    P(id): P<String>,
    Q(p): Q<TrackParams>,
) -> Result<impl IntoResponse, Problem> {
    let (from, to) = range(p.from.as_deref(), p.to.as_deref())?;
    check_raw_range(&s, from, to)?;
    let client = s.pool.get().await?;
    let (vehicle, _) = vehicle_key(&client, &id).await?;
    // A reading without a usable fix is stored, but it is no point of the track.
    let sql = format!(
        "SELECT lon, lat, ts FROM telemetry_between($1, $2, $3) WHERE {}
         ORDER BY ts, COALESCE(seq, -1) LIMIT $4",
        crate::geo::fix::sql_has_fix("$5")
    );
    let rows = client
        .query(
            &sql,
            &[
                &vehicle,
                &from,
                &to,
                &(MAX_TRACK_POINTS + 1),
                &s.config.rules.max_hdop,
            ],
        )
        .await?;
    let truncated = rows.len() as i64 > MAX_TRACK_POINTS;
    let rows = &rows[..rows.len().min(MAX_TRACK_POINTS as usize)];
    let coords: Vec<[f64; 2]> = rows.iter().map(|r| [r.get(0), r.get(1)]).collect();
    let times: Vec<String> = rows
        .iter()
        .map(|r| {
            r.get::<_, DateTime<Utc>>(2)
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        })
        .collect();
    // A LineString needs two positions: with fewer there is no line to draw.
    let geometry = if coords.len() >= 2 {
        serde_json::json!({"type": "LineString", "coordinates": coords})
    } else {
        serde_json::Value::Null
    };
    Ok(Json(serde_json::json!({
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "vehicle_id": id,
            "from": from,
            "to": to,
            "points": coords.len(),
            "truncated": truncated,
            "times": times,
        }
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RideParams {
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct RideView {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub start_lat: Option<f64>,
    pub start_lon: Option<f64>,
    pub end_lat: Option<f64>,
    pub end_lon: Option<f64>,
    pub distance_km: f64,
    pub h2_used_g: f32,
    pub ended_in_parking: bool,
    pub parking_zone: Option<String>,
}

/// Newest first, by id: a ride stored while a client pages is never shown twice or skipped.
pub(super) async fn rides(
    State(s): State<AppState>,
    P(id): P<String>,
    Q(p): Q<RideParams>,
) -> Result<impl IntoResponse, Problem> {
    let from = p
        .from
        .as_deref()
        .map(|v| time_param("from", Some(v), Utc::now()))
        .transpose()?;
    let to =
        p.to.as_deref()
            .map(|v| time_param("to", Some(v), Utc::now()))
            .transpose()?;
    let limit = page_limit(p.limit, 100)?;
    let client = s.pool.get().await?;
    let (vehicle, _) = vehicle_key(&client, &id).await?;
    let rows = client
        .query(
            "SELECT id, started_at, ended_at, start_lat, start_lon, end_lat, end_lon,
                    distance_km, h2_used_g, ended_in_parking, parking_zone
             FROM rides WHERE vehicle_id = $1
               AND ($2::timestamptz IS NULL OR ended_at >= $2)
               AND ($3::timestamptz IS NULL OR started_at < $3)
               AND ($4::int8 IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5",
            &[&vehicle, &from, &to, &p.before, &limit],
        )
        .await?;
    let items: Vec<RideView> = rows
        .iter()
        .map(|r| RideView {
            id: r.get(0),
            started_at: r.get(1),
            ended_at: r.get(2),
            start_lat: r.get(3),
            start_lon: r.get(4),
            end_lat: r.get(5),
            end_lon: r.get(6),
            distance_km: r.get(7),
            h2_used_g: r.get(8),
            ended_in_parking: r.get(9),
            parking_zone: r.get(10),
        })
        .collect();
    Ok(Json(Page::new(items, limit, |r| r.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepts_units_within_a_day() {
        assert_eq!(parse_every("30s").unwrap(), 30);
        assert_eq!(parse_every("1m").unwrap(), 60);
        assert_eq!(parse_every("2h").unwrap(), 7200);
        assert_eq!(parse_every("1d").unwrap(), 86_400);
        for bad in [
            "",
            "m",
            "0s",
            "2d",
            "1w",
            "1.5m",
            "-1m",
            "99999999999999999999s",
        ] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formula_cells_are_defused() {
        for f in ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"] {
            assert_eq!(spreadsheet_text(f), format!("'{f}"));
        }
        assert_eq!(spreadsheet_text("E12 TANK"), "E12 TANK");
        assert_eq!(spreadsheet_text(""), "");
    }

    #[test]
    fn raw_cursors_round_trip_with_and_without_seq() {
        let ts = DateTime::parse_from_rfc3339("2025-05-01T08:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut p = TelemetryPoint {
            ts,
            seq: Some(7),
            lat: 0.0,
            lon: 0.0,
            speed_kmh: 0.0,
            h2_g: 0.0,
            hdop: None,
            heading_deg: None,
            h2_pressure_bar: None,
            tank_temp_c: None,
            fc_power_w: None,
            fc_temp_c: None,
            batt_v: None,
            odo_km: None,
            locked: None,
            faults: vec![],
            extra: None,
        };
        assert_eq!(parse_raw_cursor(&raw_cursor(&p)).unwrap(), (ts, 7));
        p.seq = None;
        assert_eq!(parse_raw_cursor(&raw_cursor(&p)).unwrap(), (ts, -1));
        assert!(parse_raw_cursor("yesterday").is_err());
    }
}
